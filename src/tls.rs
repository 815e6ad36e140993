//! TLS under the handler (feature `tls`): a rustls session per connection, sans-IO. The loop
//! reads ciphertext from the socket and feeds it here; plaintext comes out for `on_data`.
//! `send` hands plaintext here and the records that come out go through the ordinary
//! output queue, so buffered sendall, watermarks, `max_output`, the send deadline, lingering
//! and graceful shutdown apply to TLS connections unchanged. This file touches no socket.
//!
//! The crypto provider is *ring*: it builds with the C compiler every machine of ours has,
//! where aws-lc-rs (rustls' default) also wants cmake, which a fresh machine lacks.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

pub use rustls;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from PEM files: the certificate chain (leaf first) and its
/// private key (PKCS#8, PKCS#1 or SEC1). TLS 1.2 and 1.3, no client authentication.
pub fn server_config(cert_chain: &Path, key: &Path) -> io::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert_chain)
        .map_err(invalid)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(invalid)?;
    server_config_der(certs, key)
}

/// A server configuration from DER certificates and key (e.g. made with `rcgen`).
pub fn server_config_der(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> io::Result<Arc<ServerConfig>> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(invalid)?;
    Ok(Arc::new(config))
}

/// A client configuration trusting the certificates in a PEM file (and no others).
pub fn client_config(roots: &Path) -> io::Result<Arc<ClientConfig>> {
    let certs = CertificateDer::pem_file_iter(roots)
        .map_err(invalid)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    client_config_der(certs)
}

/// A client configuration trusting these DER certificates.
pub fn client_config_der(roots: Vec<CertificateDer<'static>>) -> io::Result<Arc<ClientConfig>> {
    let mut store = RootCertStore::empty();
    for cert in roots {
        store.add(cert).map_err(invalid)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A close asked for while the handshake was still running: done when it finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deferred {
    Close,
    ShutdownWrite,
}

/// One connection's TLS session.
pub(crate) struct Tls {
    conn: Connection,
    /// Plaintext handed over before the handshake finished (rustls holds it until then);
    /// counted toward `max_output` and the watermarks.
    early: usize,
    close_notify_sent: bool,
    /// Ciphertext read from the socket but not yet fed (reading paused in between).
    backlog: Vec<u8>,
    /// `close` or `shutdown_write` before the handshake finished.
    deferred: Option<Deferred>,
    /// The handshake finished at the last `feed` (taken by `just_finished`).
    finished: bool,
}

impl Tls {
    pub(crate) fn server(config: Arc<ServerConfig>) -> io::Result<Tls> {
        let conn = rustls::ServerConnection::new(config).map_err(invalid)?;
        Ok(Tls::new(conn.into()))
    }

    pub(crate) fn client(config: Arc<ClientConfig>, name: &str) -> io::Result<Tls> {
        let name = ServerName::try_from(name.to_string()).map_err(invalid)?;
        let conn = ClientConnection::new(config, name).map_err(invalid)?;
        Ok(Tls::new(conn.into()))
    }

    fn new(mut conn: Connection) -> Tls {
        // Plaintext is bounded by the loop's own limits (`early`, `max_output`) instead.
        conn.set_buffer_limit(None);
        Tls {
            conn,
            early: 0,
            close_notify_sent: false,
            backlog: Vec::new(),
            deferred: None,
            finished: false,
        }
    }

    /// Keeps ciphertext that could not be fed now (reading paused), for the next read.
    pub(crate) fn stash(&mut self, ciphertext: &[u8]) {
        self.backlog.extend_from_slice(ciphertext);
    }

    /// The ciphertext kept by `stash`, if any.
    pub(crate) fn take_backlog(&mut self) -> Option<Vec<u8>> {
        (!self.backlog.is_empty()).then(|| std::mem::take(&mut self.backlog))
    }

    /// Remembers a close asked for during the handshake (the first one wins; a full close
    /// supersedes a write shutdown).
    pub(crate) fn defer(&mut self, what: Deferred) {
        if self.deferred != Some(Deferred::Close) {
            self.deferred = Some(what);
        }
    }

    pub(crate) fn deferred(&self) -> Option<Deferred> {
        self.deferred
    }

    /// Whether the handshake finished since the last call, and the close deferred meanwhile.
    pub(crate) fn just_finished(&mut self) -> Option<Option<Deferred>> {
        std::mem::take(&mut self.finished).then(|| self.deferred.take())
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Feeds ciphertext read from the socket; returns how much rustls took (it may take less
    /// while it holds undelivered plaintext). A protocol error (bad record, failed
    /// handshake, garbage) is an `InvalidData` error; the alert for it is then waiting in
    /// `take_records`.
    pub(crate) fn feed(&mut self, mut ciphertext: &[u8]) -> io::Result<usize> {
        let before = ciphertext.len();
        if before > 0 {
            match self.conn.read_tls(&mut ciphertext) {
                Ok(_) => {}
                // "Buffer full": deliver plaintext first, then feed the rest.
                Err(e) if e.kind() == io::ErrorKind::Other => {}
                Err(e) => return Err(e),
            }
        }
        let handshaking = self.conn.is_handshaking();
        self.conn.process_new_packets().map_err(invalid)?;
        if handshaking && !self.conn.is_handshaking() {
            self.early = 0;
            self.finished = true;
        }
        Ok(before - ciphertext.len())
    }

    /// Plaintext ready for the handler, into `buf`. `Ok(0)`: the peer sent close_notify.
    /// `WouldBlock`: none now.
    pub(crate) fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.conn.reader().read(buf)
    }

    /// Appends the records rustls wants sent (handshake, alerts, encrypted data) to `out`.
    pub(crate) fn take_records(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                break; // writing into a Vec does not fail
            }
        }
    }

    /// Plaintext queued before the handshake finished.
    pub(crate) fn early(&self) -> usize {
        self.early
    }

    /// Encrypts `plain`, appending the records to `out` (before the handshake finishes,
    /// rustls keeps the plaintext and the records come later, from `feed`).
    pub(crate) fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.conn.is_handshaking() {
            self.early += plain.len();
        }
        self.conn.writer().write_all(plain)?;
        self.take_records(out);
        Ok(())
    }

    /// The close_notify alert, once, appended to `out`.
    pub(crate) fn close_notify(&mut self, out: &mut Vec<u8>) {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.conn.send_close_notify();
            self.take_records(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Tls, Tls) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let server = Tls::server(server_config_der(vec![der.clone()], key).unwrap()).unwrap();
        let client = Tls::client(client_config_der(vec![der]).unwrap(), "localhost").unwrap();
        (server, client)
    }

    /// Moves records both ways until neither side has anything to send.
    fn pump(a: &mut Tls, b: &mut Tls) {
        for _ in 0..10 {
            let (mut ab, mut ba) = (Vec::new(), Vec::new());
            a.take_records(&mut ab);
            b.take_records(&mut ba);
            if ab.is_empty() && ba.is_empty() {
                return;
            }
            let mut at = 0;
            while at < ab.len() {
                at += b.feed(&ab[at..]).unwrap();
            }
            let mut at = 0;
            while at < ba.len() {
                at += a.feed(&ba[at..]).unwrap();
            }
        }
    }

    #[test]
    fn a_session_carries_plaintext_both_ways_and_closes_cleanly() {
        let (mut server, mut client) = pair();
        let mut out = Vec::new();
        client.encrypt(b"early hello", &mut out).unwrap();
        assert!(!out.is_empty(), "the ClientHello");
        assert_eq!(client.early(), 11);
        server.feed(&out).unwrap();
        pump(&mut server, &mut client);
        assert!(!server.is_handshaking() && !client.is_handshaking());
        assert_eq!(client.early(), 0);
        let mut buf = [0u8; 64];
        let n = server.read_plain(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"early hello");
        let mut records = Vec::new();
        server.encrypt(b"reply", &mut records).unwrap();
        client.feed(&records).unwrap();
        let n = client.read_plain(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"reply");
        let mut alert = Vec::new();
        client.close_notify(&mut alert);
        client.close_notify(&mut alert);
        server.feed(&alert).unwrap();
        assert_eq!(
            server.read_plain(&mut buf).unwrap(),
            0,
            "close_notify reads as EOF"
        );
    }

    #[test]
    fn garbage_is_an_error_with_an_alert_to_send() {
        let (mut server, _) = pair();
        let err = server
            .feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut alert = Vec::new();
        server.take_records(&mut alert);
        assert_eq!(alert.first(), Some(&21), "a TLS alert record");
    }
}

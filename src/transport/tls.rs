//! TLS over a non-blocking socket with rustls, after rustls' own mio server example: bytes
//! read from the socket go into the TLS state machine, plaintext comes out of it; queued
//! plaintext is encrypted a record at a time and written as the socket takes it.
//!
//! The crypto provider is *ring*: it builds with a C compiler alone (aws-lc-rs also needs
//! cmake and adds about a megabyte to the binary), which suits the small hosts we aim at.

use super::write_queue::WriteQueue;
use mio::net::TcpStream;
use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Plaintext handed to rustls at once: one full TLS record, so many small frames are
/// encrypted together instead of one record (and one write) each.
const RECORD_PLAINTEXT: usize = 16 * 1024;

pub struct TlsStream {
    socket: TcpStream,
    tls: ServerConnection,
    /// Small frames gathered into one record; kept only while it holds bytes.
    record: Vec<u8>,
}

/// Reads a PEM certificate chain and private key and makes a server configuration that
/// offers TLS 1.3 and 1.2. Errors name the file and what is wrong with it.
pub fn load_config(cert: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key_file.display()))?;
    Ok(Arc::new(config))
}

impl TlsStream {
    pub fn new(socket: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<TlsStream> {
        let tls = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsStream { socket, tls, record: Vec::new() })
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.socket
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Whether rustls holds bytes for the socket (handshake messages, records, alerts).
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Reads decrypted bytes, up to `buf.len()`; `Ok(0)` is the peer closing (with or without
    /// `close_notify`). A peer that does not speak TLS gets an alert and an `InvalidData` error.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut seen_eof = false;
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if seen_eof {
                return Ok(0);
            }
            match self.tls.read_tls(&mut self.socket) {
                Ok(0) => seen_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Best effort: tell the peer why, then give up on the connection.
                let _ = self.tls.write_tls(&mut self.socket);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Writes what rustls holds; `Ok(false)` when the socket would take no more now.
    fn write_pending(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Encrypts and writes bytes that are not queued frames (an HTTP response, WebSocket
    /// frames), a record at a time; returns how many were taken, 0 when none can be now.
    pub fn send(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.write_pending()? || self.tls.is_handshaking() || data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(RECORD_PLAINTEXT);
        self.tls.writer().write_all(&data[..n])?;
        self.write_pending()?;
        Ok(n)
    }

    /// Tells the peer the session ends (best effort: the connection is being closed).
    pub fn close_notify(&mut self) {
        self.tls.send_close_notify();
        let _ = self.write_pending();
    }

    /// Writes what rustls holds, then encrypts and writes queued plaintext a record at a time
    /// while the socket takes it. Nothing is encrypted during the handshake: the queue keeps
    /// it, so its size stays what the output limits see.
    pub fn flush(&mut self, queue: &mut WriteQueue) -> io::Result<()> {
        loop {
            if !self.write_pending()? {
                return Ok(());
            }
            if queue.is_empty() || self.tls.is_handshaking() {
                self.record = Vec::new();
                return Ok(());
            }
            self.record.clear();
            while let Some(front) = queue.front() {
                let n = front.len().min(RECORD_PLAINTEXT - self.record.len());
                self.record.extend_from_slice(&front[..n]);
                queue.advance(n);
                if self.record.len() == RECORD_PLAINTEXT {
                    break;
                }
            }
            // rustls accepts a whole record while it holds nothing else to send.
            self.tls.writer().write_all(&self.record)?;
        }
    }
}

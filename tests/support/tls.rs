//! TLS for the integration tests: certificates made with `openssl`, and a [`Client`] whose
//! bytes cross a real TLS session.
//!
//! The client side runs in a pump thread: the test's ordinary [`Client`] talks plain bytes to
//! a loopback socket, and the pump carries them through a rustls client session to the
//! server's TLS port and back. Every helper of [`Client`] therefore works over TLS unchanged.
//! When the server closes the TLS session, the pump closes the test's socket, so a close is
//! seen as it is over plain TCP.

use super::Client;
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;

/// A certificate and its key, as PEM files.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a self-signed certificate for `localhost` and 127.0.0.1 in `dir`, named `name`.
pub fn make_certificate(dir: &Path, name: &str) -> Certificate {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A leaf, not a CA: rustls refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl could not make a certificate");
    Certificate { cert, key }
}

/// A client configuration that trusts only the certificate in `ca`.
pub fn trusting(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the certificate") {
        roots.add(cert.expect("a PEM certificate")).expect("a usable certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Runs a TLS handshake with the server on `port`, trusting only `ca`; the error says why
/// it failed (an untrusted certificate, a closed connection).
pub fn handshake(port: u16, ca: &Path) -> Result<(), String> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(super::READ_TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(trusting(ca), name).map_err(|e| e.to_string())?;
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A [`Client`] connected to the server's TLS port through a rustls session trusting `ca`.
pub fn connect(port: u16, ca: &Path) -> Client {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (pump_side, _) = listener.accept().unwrap();
    let server = TcpStream::connect(("127.0.0.1", port)).expect("connect to the TLS port");
    let name = ServerName::try_from("localhost").unwrap();
    let tls = ClientConnection::new(trusting(ca), name).unwrap();
    thread::spawn(move || {
        let _ = pump(tls, server, pump_side);
    });
    Client::over(local)
}

const SERVER: Token = Token(0);
const LOCAL: Token = Token(1);

/// Carries bytes between the test's socket (`local`) and the TLS session until either side
/// closes.
fn pump(mut tls: ClientConnection, server: TcpStream, local: TcpStream) -> io::Result<()> {
    server.set_nonblocking(true)?;
    local.set_nonblocking(true)?;
    let (mut server, mut local) = (MioStream::from_std(server), MioStream::from_std(local));
    let mut poll = Poll::new()?;
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry().register(&mut server, SERVER, both)?;
    poll.registry().register(&mut local, LOCAL, both)?;
    let mut events = Events::with_capacity(8);
    let mut buf = vec![0u8; 64 * 1024];
    let mut to_local: Vec<u8> = Vec::new();
    let (mut server_done, mut local_done) = (false, false);
    loop {
        while tls.wants_write() {
            match tls.write_tls(&mut server) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    server_done = true;
                    break;
                }
            }
        }
        while !to_local.is_empty() {
            match local.write(&to_local) {
                Ok(n) => drop(to_local.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Ok(()),
            }
        }
        if server_done && to_local.is_empty() {
            let _ = local.shutdown(Shutdown::Both);
            return Ok(());
        }
        if local_done {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut server);
            let _ = server.shutdown(Shutdown::Write);
            return Ok(());
        }
        poll.poll(&mut events, None)?;
        loop {
            match local.read(&mut buf) {
                Ok(0) => {
                    local_done = true;
                    break;
                }
                Ok(n) => tls.writer().write_all(&buf[..n])?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    local_done = true;
                    break;
                }
            }
        }
        // Records are read and their plaintext taken one read at a time: rustls holds only a
        // bounded amount of received plaintext, and refuses more records until it is taken.
        while !server_done {
            match tls.read_tls(&mut server) {
                Ok(0) => server_done = true,
                Ok(_) => {
                    if tls.process_new_packets().is_err() {
                        server_done = true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => server_done = true,
            }
            loop {
                match tls.reader().read(&mut buf) {
                    Ok(0) => {
                        server_done = true;
                        break;
                    }
                    Ok(n) => to_local.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        server_done = true;
                        break;
                    }
                }
            }
        }
    }
}

/// Sends `request` over TLS (trusting `ca`) and returns everything the server answers, up to
/// its close (or, for a WebSocket upgrade, which stays open, up to the end of the head).
pub fn exchange(port: u16, ca: &Path, request: &[u8]) -> Vec<u8> {
    let socket = TcpStream::connect(("127.0.0.1", port)).expect("connect to the TLS port");
    socket.set_read_timeout(Some(super::READ_TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = ClientConnection::new(trusting(ca), name).unwrap();
    let mut stream = rustls::StreamOwned::new(tls, socket);
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return answer,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.starts_with(b"HTTP/1.1 101") && answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    return answer;
                }
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return answer,
            Err(e) => panic!("reading the TLS answer: {e}"),
        }
    }
}

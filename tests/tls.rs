//! TLS (PROTOCOL.md §1): the same frames over `--tls-listen`, certificates reloaded on SIGHUP,
//! and what happens to clients that do not complete a handshake.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use support::tls::{self, Certificate};
use support::*;

/// A server with a TLS listener on the certificate `cert` (the files stay in place, so a
/// test can replace them and send SIGHUP).
fn tls_server(dir: tempfile::TempDir, cert: &Certificate, extra: &[&str]) -> TestServer {
    let (cert, key) = (cert.cert.to_str().unwrap().to_string(), cert.key.to_str().unwrap().to_string());
    let mut args = vec!["--tls-listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    TestServer::start_in(dir, &args)
}

fn certificate_dir() -> (tempfile::TempDir, tempfile::TempDir) {
    (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
}

/// A TLS client past HELLO and logged in as a new user `name`.
fn tls_user(server: &TestServer, ca: &Path, name: &str) -> Client {
    let mut client = tls::connect(server.tls_port.unwrap(), ca);
    client.hello();
    assert_eq!(client.call(register_request(name)), Message::Ok);
    client.login(name);
    client.sync();
    client
}

/// Reads until the server closes the connection; fails after `deadline`.
fn wait_for_close(socket: &mut TcpStream, deadline: Duration) {
    socket.set_read_timeout(Some(deadline)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => return,
            Err(e) => panic!("no close within {:?}: {e}", started.elapsed()),
        }
    }
}

#[test]
fn two_users_chat_over_tls_and_with_a_plain_client() {
    let (certs, db) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "server");
    let server = tls_server(db, &cert, &[]);
    let mut alice = tls_user(&server, &cert.cert, "alice");
    let mut bob = tls_user(&server, &cert.cert, "bob");
    make_friends(&mut alice, &mut bob);
    let (id, _) = alice.call(req::send("bob", 1, "over TLS")).sent();
    let pushed = bob.push();
    assert_eq!(pushed.deliver().body, "over TLS");
    assert_eq!(pushed.item_id(), Some(id));
    // The plain listener serves the same users.
    let mut carol = server.user("carol");
    assert_eq!(carol.call(req::ping()), Message::Pong);
    let long = "x".repeat(4000);
    alice.call(req::send("bob", 2, &long)).sent();
    assert_eq!(bob.push().deliver().body, long);
}

#[test]
fn plain_text_on_the_tls_port_is_closed_and_the_server_goes_on() {
    let (certs, db) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "server");
    let server = tls_server(db, &cert, &[]);
    let mut plain = TcpStream::connect(("127.0.0.1", server.tls_port.unwrap())).unwrap();
    std::io::Write::write_all(&mut plain, &frame(op::HELLO, 1, &2u16.to_be_bytes())).unwrap();
    wait_for_close(&mut plain, READ_TIMEOUT);
    let mut client = tls::connect(server.tls_port.unwrap(), &cert.cert);
    assert_eq!(client.hello().version, 2);
    assert_eq!(server.hello().call(req::ping()), Message::Pong);
}

#[test]
fn a_tls_connection_over_the_limit_is_told_server_full_after_its_handshake() {
    let (dir, certs) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "localhost");
    let server = tls_server(dir, &cert, &["--max-connections", "1"]);
    let mut first = tls_user(&server, &cert.cert, "alice");
    // Refused in clear text, the client would read the error as a broken handshake: it is
    // told inside TLS once the handshake is done, then closed.
    let mut second = tls::connect(server.tls_port.unwrap(), &cert.cert);
    second.assert_error_and_close(code::SERVER_FULL);
    assert_eq!(first.call(req::ping()), Message::Pong, "the first connection is unaffected");
}

#[test]
fn a_truncated_handshake_and_a_silent_connection_time_out() {
    let (certs, db) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "server");
    let server = tls_server(db, &cert, &["--login-timeout", "1"]);
    let port = server.tls_port.unwrap();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut truncated = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A handshake record header announcing 512 bytes, and then nothing.
    std::io::Write::write_all(&mut truncated, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    // The login timeout is 1 s; the sweep runs at least once a second.
    wait_for_close(&mut silent, Duration::from_secs(10));
    wait_for_close(&mut truncated, Duration::from_secs(10));
    let mut client = tls::connect(port, &cert.cert);
    assert_eq!(client.hello().version, 2);
}

#[test]
fn a_client_that_does_not_trust_the_certificate_cannot_connect() {
    let (certs, db) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "server");
    let stranger = tls::make_certificate(certs.path(), "stranger");
    let server = tls_server(db, &cert, &[]);
    let error = tls::handshake(server.tls_port.unwrap(), &stranger.cert).unwrap_err();
    assert!(error.contains("certificate"), "{error}");
    tls::handshake(server.tls_port.unwrap(), &cert.cert).unwrap();
}

#[test]
fn sighup_serves_a_new_certificate_to_new_connections_while_old_sessions_chat_on() {
    let (certs, db) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "server");
    let server = tls_server(db, &cert, &[]);
    let port = server.tls_port.unwrap();
    let mut alice = tls_user(&server, &cert.cert, "alice");
    let mut bob = server.user("bob");
    make_friends(&mut alice, &mut bob);

    let renewed = tls::make_certificate(certs.path(), "renewed");
    std::fs::copy(&renewed.cert, &cert.cert).unwrap();
    std::fs::copy(&renewed.key, &cert.key).unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls::handshake(port, &renewed.cert).is_err() {
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The session from before the reload goes on, both ways.
    alice.call(req::send("bob", 1, "still here")).sent();
    assert_eq!(bob.push().deliver().body, "still here");
    bob.call(req::send("alice", 1, "me too")).sent();
    assert_eq!(alice.push().deliver().body, "me too");
}

#[test]
fn a_bad_certificate_file_on_reload_keeps_the_certificate_in_use() {
    let (certs, db) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "server");
    let server = tls_server(db, &cert, &[]);
    let kept = certs.path().join("kept.crt");
    std::fs::copy(&cert.cert, &kept).unwrap();
    std::fs::write(&cert.cert, "not a certificate\n").unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("cannot reload the TLS certificate") {
        assert!(Instant::now() < deadline, "the reload was never attempted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // New connections still get the certificate the server started with.
    tls::handshake(server.tls_port.unwrap(), &kept).unwrap();
    assert_eq!(tls::connect(server.tls_port.unwrap(), &kept).hello().version, 2);
}

#[test]
fn frame_limits_apply_to_the_decrypted_stream() {
    let (certs, db) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "server");
    let server = tls_server(db, &cert, &[]);
    let mut client = tls::connect(server.tls_port.unwrap(), &cert.cert);
    client.hello();
    // Before login a frame may be 4096 bytes long; this one says 4097.
    client.write_raw(&[0, 0, 0x10, 0x01, op::PING, 0, 0, 0, 1]);
    client.assert_error_and_close(code::FRAME_TOO_LARGE);
}

#[test]
fn the_tls_port_also_serves_the_page_and_its_websocket() {
    let (certs, db) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "server");
    let server = tls_server(db, &cert, &[]);
    let port = server.tls_port.unwrap();
    let page = tls::exchange(port, &cert.cert, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Security-Policy:"), "{page}");
    // The page's own origin is https://<Host>; a page served over http may not connect.
    let upgrade = |origin: &str| {
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
        );
        // The server keeps an upgraded connection open until the login timeout: ask for the
        // answer's first line only, by closing after the head.
        String::from_utf8_lossy(&tls::exchange(port, &cert.cert, head.as_bytes())).into_owned()
    };
    assert!(upgrade(&format!("https://localhost:{port}")).starts_with("HTTP/1.1 101"));
    assert!(upgrade(&format!("http://localhost:{port}")).starts_with("HTTP/1.1 403"));
}

/// imchat with `--tls`: a self-signed certificate is refused with a sentence that says what to
/// do, and accepted with `--ca`.
#[test]
fn the_terminal_chat_says_why_it_does_not_trust_a_certificate() {
    let (certs, db) = certificate_dir();
    let cert = tls::make_certificate(certs.path(), "server");
    let server = tls_server(db, &cert, &[]);
    let imchat = |extra: &[&str]| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let address = format!("127.0.0.1:{}", server.tls_port.unwrap());
        let output = std::process::Command::new("python3")
            .arg(repo.join("scripts/imchat.py"))
            .args(["--addr", &address, "--device-file", certs.path().join("device.json").to_str().unwrap()])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("python3 runs");
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (status, out) = imchat(&["--tls"]);
    assert_eq!(status, Some(1), "{out}");
    assert!(out.contains("certificate is not trusted") && out.contains("--ca"), "{out}");
    let (status, out) = imchat(&["--ca", cert.cert.to_str().unwrap()]);
    assert_eq!(status, Some(0), "{out}");
    assert!(out.contains("over TLS"), "{out}");
}

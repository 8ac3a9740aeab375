//! Smoke test of the `im-bench` binary: each im-server shape, tiny and about a second long,
//! against the real server, over plain TCP and over TLS (and Redis over TLS when
//! `redis-server` is installed). Only that each run succeeds and verifies delivery is checked;
//! speed is never asserted here (scripts/bench.sh measures it).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How clients reach a server under test.
enum Listener {
    Plain,
    /// TLS with a self-signed certificate for localhost from `scripts/make-cert.sh`.
    Tls,
}

/// A running server (im-server, or Redis) on a temporary directory; killed on drop.
struct Server {
    child: Child,
    /// The im-bench flags that reach it: address, target and TLS.
    client: Vec<String>,
    _stdout: Option<BufReader<ChildStdout>>,
    _dir: TempDir,
}

impl Server {
    fn start() -> Server {
        Server::im(Listener::Plain)
    }

    /// im-server on port 0; with TLS, im-bench is pointed at its TLS port (the second line).
    fn im(listener: Listener) -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut command = Command::new(env!("CARGO_BIN_EXE_im-server"));
        command.arg("--listen").arg("127.0.0.1:0").arg("--db").arg(dir.path().join("bench.db")).args([
            "--min-kdf-iterations",
            "1000",
            "--send-rate",
            "0",
            "--max-offline",
            "0",
        ]);
        let cert = match listener {
            Listener::Plain => None,
            Listener::Tls => {
                let (cert, key) = make_certificate(dir.path());
                command.arg("--tls-listen").arg("127.0.0.1:0").arg("--tls-cert").arg(&cert).arg("--tls-key").arg(key);
                Some(cert)
            }
        };
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start im-server");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut address = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read a line");
            line.trim().strip_prefix(prefix).unwrap_or_else(|| panic!("expected {prefix:?}: {line:?}")).to_string()
        };
        let plain = address("listening on ");
        let client = match cert {
            None => vec!["--addr".into(), plain],
            Some(cert) => tls_client(address("listening for TLS on "), &cert),
        };
        Server { child, client, _stdout: Some(stdout), _dir: dir }
    }

    /// Redis pub/sub on a TLS port only, as scripts/bench.sh starts it; `None` (with a note)
    /// when `redis-server` is not installed.
    fn redis_tls() -> Option<Server> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            eprintln!("redis-server is not installed: Redis over TLS is not checked");
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let (cert, key) = make_certificate(dir.path());
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&cert)
            .args(["--tls-auth-clients", "no", "--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let address = format!("127.0.0.1:{port}");
        let mut client = tls_client(address.clone(), &cert);
        client.extend(["--target".into(), "redis".into()]);
        let server = Server { child, client, _stdout: None, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {address}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// Runs one shape with `--json`; returns the JSON line after checking success and delivery.
    fn bench(&self, extra: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_im-bench"))
            .args(&self.client)
            .args(["--server-pid", &self.child.id().to_string()])
            .args(["--seconds", "1", "--warmup", "0.2", "--timeout", "30", "--json"])
            .args(extra)
            .output()
            .expect("run im-bench");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "im-bench {extra:?} failed: {}\n{stdout}\n{stderr}", output.status);
        let json = stdout.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line: {stdout}"));
        assert!(json.contains("\"verified\":true"), "delivery not verified: {json}\n{stderr}");
        json.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for localhost and 127.0.0.1 in `dir`: (cert.pem, key.pem).
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-cert.sh");
    let status = Command::new(script).arg(dir).stdout(Stdio::null()).status().expect("run make-cert.sh");
    assert!(status.success(), "make-cert.sh failed");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The im-bench flags for a TLS server at `address` whose certificate is `cert`.
fn tls_client(address: String, cert: &Path) -> Vec<String> {
    vec!["--addr".into(), address, "--tls".into(), "--tls-ca".into(), cert.display().to_string()]
}

#[test]
fn pairs_delivers_every_acknowledged_message_once() {
    let json = Server::start().bench(&["pairs", "--pairs", "3", "--window", "4", "--body", "64"]);
    assert!(json.contains("\"shape\":\"pairs\""), "{json}");
    assert!(json.contains("\"deliveries_per_s\":"), "{json}");
}

#[test]
fn fanout_reaches_every_member() {
    let json = Server::start().bench(&["fanout", "--members", "5", "--window", "4"]);
    assert!(json.contains("\"members\":5"), "{json}");
}

#[test]
fn idle_holds_connections_from_rotated_source_addresses() {
    // --source-ips binds each socket before connecting, the path used once ports run out.
    let json = Server::start().bench(&["--source-ips", "3", "idle", "--connections", "30"]);
    assert!(json.contains("\"closed_while_idle\":0"), "{json}");
    assert!(json.contains("\"kib_per_connection\":"), "{json}");
}

#[test]
fn login_completes_scram_logins() {
    let json = Server::start().bench(&["login", "--connections", "4"]);
    assert!(json.contains("\"logins_per_s\":"), "{json}");
}

#[test]
fn drain_delivers_the_offline_backlog() {
    let json = Server::start().bench(&["drain", "--messages", "300", "--window", "32"]);
    assert!(json.contains("\"sync_done_count\":300"), "{json}");
    assert!(json.contains("\"redelivered_after_ack\":0"), "{json}");
}

#[test]
fn drain_on_three_devices_delivers_the_backlog_to_each() {
    let json = Server::start().bench(&["drain", "--messages", "300", "--window", "32", "--devices", "3"]);
    assert!(json.contains("\"devices\":3"), "{json}");
    for device in 1..=3 {
        assert!(json.contains(&format!("\"device{device}_sync_done_count\":300")), "{json}");
        assert!(json.contains(&format!("\"device{device}_redelivered_after_ack\":0")), "{json}");
    }
}

#[test]
fn every_im_server_shape_verifies_over_tls() {
    let server = Server::im(Listener::Tls);
    // The drain pushes far more than rustls' 16 KiB of unread plaintext in one burst.
    let shapes: [&[&str]; 5] = [
        &["pairs", "--pairs", "3", "--window", "4"],
        &["fanout", "--members", "5", "--window", "4"],
        &["login", "--connections", "4"],
        &["idle", "--connections", "20"],
        &["drain", "--messages", "3000", "--window", "64"],
    ];
    for shape in shapes {
        let json = server.bench(shape);
        assert!(json.contains(&format!("\"shape\":\"{}\"", shape[0])), "{json}");
    }
}

#[test]
fn redis_pub_sub_shapes_verify_over_tls() {
    let Some(server) = Server::redis_tls() else { return };
    let shapes: [&[&str]; 3] = [
        &["pairs", "--pairs", "3", "--window", "4"],
        &["fanout", "--members", "5", "--window", "4"],
        &["idle", "--connections", "20"],
    ];
    for shape in shapes {
        let json = server.bench(shape);
        assert!(json.contains("\"target\":\"redis\""), "{json}");
    }
}

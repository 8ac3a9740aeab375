//! Smoke test of the `im-bench` binary: each im-server shape, tiny and about a second long,
//! against the real server. Only that each run succeeds and verifies delivery is checked;
//! speed is never asserted here (scripts/bench.sh measures it).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use tempfile::TempDir;

/// A running `im-server` on port 0 with a temporary database; killed on drop.
struct Server {
    child: Child,
    addr: String,
    _stdout: BufReader<ChildStdout>,
    _dir: TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--db")
            .arg(dir.path().join("bench.db"))
            .args(["--min-kdf-iterations", "1000", "--send-rate", "0", "--max-offline", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start im-server");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the first line");
        let addr =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("first line: {line:?}")).to_string();
        Server { child, addr, _stdout: stdout, _dir: dir }
    }

    /// Runs one shape with `--json`; returns the JSON line after checking success and delivery.
    fn bench(&self, extra: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_im-bench"))
            .args(["--addr", &self.addr, "--server-pid", &self.child.id().to_string()])
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

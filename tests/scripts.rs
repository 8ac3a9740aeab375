//! Runs the Python end-to-end scripts under `scripts/` against the binary this `cargo test`
//! built, so the README's one test command covers them too. Each script starts its own
//! servers and prints `N passed, N failed` last.

use std::path::Path;
use std::process::Command;

fn run_script(script: &str) {
    run_script_with(script, &[]);
}

fn run_script_with(script: &str, args: &[&str]) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(repo.join("scripts").join(script))
        .arg("--no-build")
        .args(args)
        .env("IM_SERVER_BIN", env!("CARGO_BIN_EXE_im-server"))
        .current_dir(repo)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" 0 failed"), "{script} ended with {last:?}");
}

#[test]
fn python_end_to_end() {
    run_script("test_server.py");
}

/// The same cases, every client over TLS to the server's TLS listener.
#[test]
fn python_end_to_end_over_tls() {
    run_script_with("test_server.py", &["--tls"]);
}

/// Two imchat clients in tmux, chatting, one going offline and coming back (needs tmux).
#[test]
fn terminal_chat_in_tmux() {
    run_script("test_imchat.py");
}

/// Senders under load while the server is killed with SIGKILL 20+ times: nothing acknowledged
/// is lost or duplicated, and the database stays intact.
#[test]
fn crash_safety_under_sigkill() {
    run_script("crash_test.py");
}

/// Two headless Chromiums (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs)
/// use the page the server serves: register, befriend, chat, go offline and come back, a
/// group, reloads with and without "remember me"; screenshots in target/web-screenshots.
#[test]
fn web_client_in_two_browsers() {
    let missing: Vec<&str> = ["chromium", "chromedriver"].into_iter().filter(|tool| !on_path(tool)).collect();
    if !missing.is_empty() {
        println!(
            "SKIPPED web_client_in_two_browsers: {} not installed (apt-get install chromium chromium-driver)",
            missing.join(" and ")
        );
        return;
    }
    run_script("test_web.py");
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[test]
fn python_client_self_test() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("python3")
        .arg(repo.join("scripts").join("imclient.py"))
        .arg("--self-test")
        .status()
        .expect("python3 runs");
    assert!(status.success(), "imclient.py --self-test failed");
}

/// The newcomer's sequence (issue 14): the server on its defaults (README command 1, here on
/// an ephemeral port and a temporary database, every other flag left alone), then the bundled
/// test script against it with `--addr`.
#[test]
fn the_test_script_passes_against_a_server_on_its_defaults() {
    use std::io::BufRead;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut server = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("im-server.db"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start im-server");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).expect("its first line");
    let address = line.trim().strip_prefix("listening on ").expect("listening on ADDR").to_string();
    let output = Command::new("python3")
        .arg(repo.join("scripts/test_server.py"))
        .args(["--addr", &address])
        .current_dir(repo)
        .output()
        .expect("python3 runs");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "test_server.py --addr failed:\n{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" 0 failed") && !last.starts_with("0 passed"), "{last}");
}

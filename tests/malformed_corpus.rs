//! The malformed-frame corpus (`tests/malformed/cases.txt`) against the real binary.
//!
//! Each case is sent, in one write, on a connection of its own brought to the case's state
//! (fresh, after HELLO, or logged in). The answers must be exactly those the file lists, each
//! within a second, and the connection must then be open (a PING is answered), closed, or
//! still waiting for the rest of a partial frame. Alongside, a well-behaved client that is
//! logged in gets a PONG after every case: bad input on one connection never stalls another.
//!
//! `MALFORMED_TABLE=1 cargo test --test malformed_corpus -- --nocapture` prints the corpus as a
//! markdown table (input → answer), as observed.
//!
//! Self-contained on purpose: the frames are built here and the login uses the crate's own
//! SCRAM client helpers ([`im_server::scram`]).

use im_server::scram::{self, ClientKeys};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long an expected answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection waiting for the rest of a frame must stay silent and open.
const QUIET_PERIOD: Duration = Duration::from_millis(500);
const USERNAME: &str = "malformed_tester";
const STEADY_USERNAME: &str = "steady_tester";
const PASSWORD: &[u8] = b"correct horse battery staple";
/// Above the `--min-kdf-iterations 1000` the server is started with; cheap to derive.
const ITERATIONS: u32 = 1000;
const SALT: [u8; 16] = *b"malformed-corpus";
/// The request id of the PING that checks a connection is still open.
const PROBE_ID: u32 = 0x00C0_FFEE;

const HELLO: u8 = 0x01;
const PING: u8 = 0x02;
const REGISTER: u8 = 0x03;
const LOGIN_START: u8 = 0x04;
const LOGIN_FINISH: u8 = 0x05;
const ERROR: u8 = 0x83;
const LOGIN_CHALLENGE: u8 = 0x84;
const SYNC_DONE: u8 = 0xC4;

/// Error code names, PROTOCOL.md §4 (index = code).
const ERROR_NAMES: [&str; 39] = [
    "?",
    "MALFORMED_FRAME",
    "UNKNOWN_OPCODE",
    "FRAME_TOO_LARGE",
    "UNSUPPORTED_VERSION",
    "HELLO_REQUIRED",
    "NOT_AUTHENTICATED",
    "INVALID_STATE",
    "SERVER_FULL",
    "IDLE_TIMEOUT",
    "INVALID_USERNAME",
    "USERNAME_TAKEN",
    "WEAK_CREDENTIALS",
    "AUTH_FAILED",
    "TOO_MANY_ATTEMPTS",
    "USER_NOT_FOUND",
    "ALREADY_FRIENDS",
    "REQUEST_PENDING",
    "NO_SUCH_REQUEST",
    "NOT_FRIENDS",
    "INVALID_BODY",
    "FORBIDDEN",
    "ALREADY_MEMBER",
    "INVALID_ARGUMENT",
    "STORE_UNAVAILABLE",
    "SHUTTING_DOWN",
    "SLOW_READER",
    "RATE_LIMITED",
    "RECIPIENT_QUEUE_FULL",
    "TOO_MANY_SESSIONS",
    "LOGIN_TIMEOUT",
    "TOO_MANY_DEVICES",
    "NO_SUCH_DEVICE",
    "FRAME_TIMEOUT",
    "TOO_MANY_GROUPS",
    "GROUP_FULL",
    "TOO_MANY_REQUESTS",
    "TOO_MANY_FRIENDS",
    "LOGIN_THROTTLED",
];

/// Response opcode names, PROTOCOL.md §3 (index = opcode - 0x80).
const RESPONSE_NAMES: [&str; 14] = [
    "OK",
    "HELLO_OK",
    "PONG",
    "ERROR",
    "LOGIN_CHALLENGE",
    "LOGIN_OK",
    "FRIEND_REQUEST_OK",
    "FRIEND_LIST_RESULT",
    "SENT",
    "HISTORY_PAGE",
    "GROUP_CREATED",
    "GROUP_MEMBERS_RESULT",
    "GROUP_LIST_RESULT",
    "RETRY_LATER",
];

// ---------------------------------------------------------------------------------------------
// The corpus file
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Hello,
    Login,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Open,
    Closed,
    Waiting,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Open => "open",
            Outcome::Closed => "closed",
            Outcome::Waiting => "waiting",
        }
    }
}

struct Case {
    line: usize,
    name: String,
    state: State,
    /// The bytes field as written in the file (compact, for the table).
    hex: String,
    bytes: Vec<u8>,
    answers: Vec<String>,
    outcome: Outcome,
}

fn parse_hex(field: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for token in field.split_whitespace() {
        let (octet, count) = match token.split_once('*') {
            Some((octet, count)) => (octet, count.parse::<usize>().map_err(|e| format!("{token}: {e}"))?),
            None => (token, 1),
        };
        let value = u8::from_str_radix(octet, 16).map_err(|e| format!("{token}: {e}"))?;
        out.extend(std::iter::repeat_n(value, count));
    }
    Ok(out)
}

fn load_cases(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut cases = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [name, state, hex, answers, outcome] = fields[..] else {
            panic!("line {line_no}: expected 5 fields separated by \" | \", got {}", fields.len());
        };
        let state = match state {
            "fresh" => State::Fresh,
            "hello" => State::Hello,
            "login" => State::Login,
            other => panic!("line {line_no}: unknown state {other:?}"),
        };
        let outcome = match outcome {
            "open" => Outcome::Open,
            "closed" => Outcome::Closed,
            "waiting" => Outcome::Waiting,
            other => panic!("line {line_no}: unknown outcome {other:?}"),
        };
        let bytes = parse_hex(hex).unwrap_or_else(|e| panic!("line {line_no}: bad hex: {e}"));
        let answers = if answers == "-" { Vec::new() } else { answers.split_whitespace().map(String::from).collect() };
        cases.push(Case {
            line: line_no,
            name: name.to_string(),
            state,
            hex: hex.to_string(),
            bytes,
            answers,
            outcome,
        });
    }
    cases
}

// ---------------------------------------------------------------------------------------------
// The server and a raw client
// ---------------------------------------------------------------------------------------------

/// The real binary on port 0 with a database in a temporary directory; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = dir.path().join("x.db");
        let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"))
            .args(["--listen", "127.0.0.1:0", "--min-kdf-iterations", "1000", "--db"])
            .arg(&db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start im-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        Server { child, addr, _dir: dir }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server frame.
#[derive(Debug)]
struct Frame {
    opcode: u8,
    request_id: u32,
    body: Vec<u8>,
}

impl Frame {
    /// `NAME@id`: the error code's name for an ERROR, else the response's name.
    fn label(&self) -> String {
        let name = if self.opcode == ERROR && self.body.len() >= 2 {
            let code = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
            ERROR_NAMES.get(code).copied().unwrap_or("UNKNOWN_ERROR_CODE").to_string()
        } else {
            match RESPONSE_NAMES.get(self.opcode.wrapping_sub(0x80) as usize) {
                Some(name) if self.opcode >= 0x80 => name.to_string(),
                _ => format!("OPCODE_{:02X}", self.opcode),
            }
        };
        format!("{name}@{}", self.request_id)
    }
}

/// Why no frame was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Timeout,
    Closed,
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client { stream, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next frame that is not a push, within `timeout`.
    fn answer(&mut self, timeout: Duration) -> Result<Frame, End> {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.frame(deadline)?;
            if frame.opcode < 0xC0 {
                return Ok(frame);
            }
        }
    }

    /// The next push with `opcode`, within `timeout`.
    fn push(&mut self, opcode: u8, timeout: Duration) -> Result<Frame, End> {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.frame(deadline)?;
            if frame.opcode == opcode {
                return Ok(frame);
            }
        }
    }

    fn frame(&mut self, deadline: Instant) -> Result<Frame, End> {
        loop {
            if self.buf.len() >= 9 {
                let length = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                if self.buf.len() >= 4 + length {
                    let frame = Frame {
                        opcode: self.buf[4],
                        request_id: u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]),
                        body: self.buf[9..4 + length].to_vec(),
                    };
                    self.buf.drain(..4 + length);
                    return Ok(frame);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(End::Timeout);
            }
            self.stream.set_read_timeout(Some(left)).expect("read timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(End::Timeout);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Closed),
            }
        }
    }

    /// Sends a request and returns its answer, which must be `expected`.
    fn call(&mut self, request: Vec<u8>, expected: u8) -> Frame {
        self.send(&request);
        let frame = self.answer(Duration::from_secs(5)).expect("an answer");
        assert_eq!(frame.opcode, expected, "unexpected answer {}: {:02x?}", frame.label(), frame.body);
        frame
    }

    fn hello(&mut self) {
        self.call(frame(HELLO, 1, &2u16.to_be_bytes()), 0x81);
    }

    /// SCRAM login (PROTOCOL.md §5), then waits for the end of the offline backlog.
    fn login(&mut self, username: &str, keys: &ClientKeys) {
        let client_nonce = [0x5A; 24];
        let mut body = Vec::new();
        put_str(&mut body, username.as_bytes());
        put_str(&mut body, &client_nonce);
        let challenge = self.call(frame(LOGIN_START, 2, &body), LOGIN_CHALLENGE);
        let mut r = &challenge.body[..];
        let salt = take_bytes(&mut r);
        let iterations = u32::from_be_bytes(take(&mut r, 4).try_into().unwrap());
        let nonce = take_bytes(&mut r);
        assert_eq!((salt, iterations), (&SALT[..], ITERATIONS), "the challenge is not for our registration");
        let message = scram::auth_message(username, &client_nonce, salt, iterations, nonce);
        let proof = scram::client_proof(keys, &message);
        let mut body = Vec::new();
        put_str(&mut body, &proof);
        body.extend_from_slice(&0xC0FFEEu64.to_be_bytes());
        put_str(&mut body, b"corpus");
        self.call(frame(LOGIN_FINISH, 3, &body), 0x85);
        self.push(SYNC_DONE, Duration::from_secs(5)).expect("SYNC_DONE after login");
    }

    fn ping(&mut self, id: u32) -> Result<Frame, End> {
        self.send(&frame(PING, id, &[]));
        self.answer(ANSWER_TIMEOUT)
    }
}

fn frame(opcode: u8, request_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + body.len());
    out.extend_from_slice(&(5 + body.len() as u32).to_be_bytes());
    out.push(opcode);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn put_str(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u16).to_be_bytes());
    out.extend_from_slice(field);
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = r.split_at(n);
    *r = tail;
    head
}

fn take_bytes<'a>(r: &mut &'a [u8]) -> &'a [u8] {
    let n = u16::from_be_bytes(take(r, 2).try_into().unwrap()) as usize;
    take(r, n)
}

fn register(server: &Server, username: &str, keys: &ClientKeys) {
    let mut client = Client::connect(server.addr);
    client.hello();
    let mut body = Vec::new();
    put_str(&mut body, username.as_bytes());
    put_str(&mut body, &SALT);
    body.extend_from_slice(&ITERATIONS.to_be_bytes());
    put_str(&mut body, &keys.stored);
    put_str(&mut body, &keys.server);
    client.call(frame(REGISTER, 2, &body), 0x80);
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

/// What the server did with one case.
struct Observed {
    answers: Vec<String>,
    outcome: String,
}

fn run_case(server: &Server, keys: &ClientKeys, case: &Case) -> Observed {
    let mut client = Client::connect(server.addr);
    match case.state {
        State::Fresh => {}
        State::Hello => client.hello(),
        State::Login => {
            client.hello();
            client.login(USERNAME, keys);
        }
    }
    client.send(&case.bytes);
    let mut answers = Vec::new();
    let mut ended = None;
    for _ in 0..case.answers.len() {
        match client.answer(ANSWER_TIMEOUT) {
            Ok(frame) => answers.push(frame.label()),
            Err(end) => {
                ended = Some(end);
                break;
            }
        }
    }
    let outcome = match ended {
        Some(End::Closed) => "closed".to_string(),
        Some(End::Timeout) => "no answer within 1 s".to_string(),
        None => probe(&mut client, case.outcome, &mut answers),
    };
    Observed { answers, outcome }
}

/// After the expected answers: is the connection open, closed, or waiting? Any further frame
/// is added to `answers` (it was not expected).
fn probe(client: &mut Client, expected: Outcome, answers: &mut Vec<String>) -> String {
    match expected {
        Outcome::Open => match client.ping(PROBE_ID) {
            Ok(frame) if frame.opcode == 0x82 && frame.request_id == PROBE_ID => "open".to_string(),
            Ok(frame) => {
                answers.push(frame.label());
                "open".to_string()
            }
            Err(End::Closed) => "closed".to_string(),
            Err(End::Timeout) => "no PONG within 1 s".to_string(),
        },
        Outcome::Closed => match client.answer(ANSWER_TIMEOUT) {
            Err(End::Closed) => "closed".to_string(),
            Err(End::Timeout) => "still open after 1 s".to_string(),
            Ok(frame) => {
                answers.push(frame.label());
                "open".to_string()
            }
        },
        Outcome::Waiting => match client.answer(QUIET_PERIOD) {
            Err(End::Timeout) => "waiting".to_string(),
            Err(End::Closed) => "closed".to_string(),
            Ok(frame) => {
                answers.push(frame.label());
                "answered".to_string()
            }
        },
    }
}

fn abbreviate(hex: &str) -> String {
    if hex.len() <= 72 { hex.to_string() } else { format!("{} …", &hex[..hex[..70].rfind(' ').unwrap_or(70)]) }
}

#[test]
fn malformed_frames_get_their_documented_answers() {
    let cases = load_cases(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed/cases.txt"));
    assert!(cases.len() >= 50, "the corpus has {} cases; the issue asks for at least 50", cases.len());
    let server = Server::start();
    let keys = scram::derive_keys(PASSWORD, &SALT, ITERATIONS);
    register(&server, USERNAME, &keys);
    register(&server, STEADY_USERNAME, &keys);
    let mut steady = Client::connect(server.addr);
    steady.hello();
    steady.login(STEADY_USERNAME, &keys);

    let mut failures = Vec::new();
    let mut table = String::from(
        "| # | case | state | bytes sent (hex) | expected | answer | connection |\n|---|---|---|---|---|---|---|\n",
    );
    for (index, case) in cases.iter().enumerate() {
        let started = Instant::now();
        let observed = run_case(&server, &keys, case);
        let expected = if case.answers.is_empty() { "-".to_string() } else { case.answers.join(" ") };
        let answer = if observed.answers.is_empty() { "-".to_string() } else { observed.answers.join(" ") };
        if answer != expected || observed.outcome != case.outcome.name() {
            failures.push(format!(
                "line {} {}: expected {expected} then {}, got {answer} then {}",
                case.line,
                case.name,
                case.outcome.name(),
                observed.outcome
            ));
        }
        let state = format!("{:?}", case.state).to_lowercase();
        let _ = writeln!(
            table,
            "| {} | {} | {state} | `{}` | {expected} | {answer} | {} |",
            index + 1,
            case.name,
            abbreviate(&case.hex),
            observed.outcome
        );
        // The well-behaved client is served throughout.
        let id = 1000 + index as u32;
        match steady.ping(id) {
            Ok(frame) if frame.opcode == 0x82 && frame.request_id == id => {}
            other => failures.push(format!("after {}: the steady client got {other:?} instead of PONG", case.name)),
        }
        log_slow(case, started.elapsed());
    }
    if std::env::var_os("MALFORMED_TABLE").is_some_and(|v| v == "1") {
        println!("{table}");
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// A case should take well under the answer timeout plus the quiet period; say so if not.
fn log_slow(case: &Case, elapsed: Duration) {
    if elapsed > ANSWER_TIMEOUT * 2 + QUIET_PERIOD {
        eprintln!("case {} took {elapsed:?}", case.name);
    }
}

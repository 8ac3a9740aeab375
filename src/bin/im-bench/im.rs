//! Talking to im-server: credentials, the SCRAM login of one connection, and the setup phases
//! (register users, log them in, make friends, make a group) that the shapes share.

use crate::net::{Net, Phase, drive};
use crate::shapes::traffic::Wire;
use crate::{Common, Rng};
use im_server::protocol::PROTOCOL_VERSION;
use im_server::protocol::client::{self, NextFrame, ServerFrame};
use im_server::protocol::request::Registration;
use im_server::scram::{self, ClientKeys};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Frames bigger than this are refused as garbage (the server's own limit is far lower).
const MAX_SERVER_FRAME: u32 = 16 << 20;
/// Connections used to register users, each with this many REGISTERs in flight.
const REGISTER_CONNS: usize = 4;
const REGISTER_WINDOW: usize = 128;

/// One password, salt and iteration count for every bench user, so PBKDF2 runs once per run.
pub struct Credentials {
    pub salt: [u8; 16],
    pub iterations: u32,
    pub keys: ClientKeys,
}

impl Credentials {
    pub fn new(iterations: u32, rng: &mut Rng) -> Self {
        let mut salt = [0u8; 16];
        rng.fill(&mut salt);
        Credentials { salt, iterations, keys: scram::derive_keys(b"im-bench password", &salt, iterations) }
    }
}

/// User names `{prefix}{i}`; the prefix is random per run, so runs never collide.
pub fn names(prefix: &str, role: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{role}{i}")).collect()
}

/// Calls `f` for every whole frame at the front of `data`; returns the bytes consumed.
pub fn frames<'a>(
    data: &'a [u8],
    mut f: impl FnMut(u32, ServerFrame<'a>) -> Result<(), String>,
) -> Result<usize, String> {
    let mut used = 0;
    loop {
        match client::next_frame(&data[used..], MAX_SERVER_FRAME) {
            Ok(NextFrame::Incomplete) => return Ok(used),
            Ok(NextFrame::Frame { total, request_id, frame }) => {
                used += total;
                f(request_id, frame)?;
            }
            Err(e) => return Err(format!("the server sent a bad frame: {e}")),
        }
    }
}

/// Describes an unexpected frame for an error message.
pub fn unexpected(what: &str, frame: &ServerFrame) -> String {
    match frame {
        ServerFrame::Error { code, message } => format!("{what}: server answered {code:?}: {message}"),
        other => format!("{what}: unexpected frame {other:?}"),
    }
}

/// Where one connection is in its SCRAM login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginState {
    Idle,
    AwaitChallenge,
    AwaitOk,
    LoggedIn,
}

/// The client side of PROTOCOL.md §5 for one connection.
pub struct LoginFlow {
    nonce: [u8; 24],
    auth: Vec<u8>,
    pub state: LoginState,
    /// The device this login speaks for (PROTOCOL.md §6): each has its own position.
    pub device_id: u64,
}

impl Default for LoginFlow {
    fn default() -> Self {
        LoginFlow { nonce: [0; 24], auth: Vec::new(), state: LoginState::Idle, device_id: 1 }
    }
}

impl LoginFlow {
    /// A login that speaks for device `device_id`.
    pub fn for_device(device_id: u64) -> Self {
        LoginFlow { device_id, ..LoginFlow::default() }
    }

    /// Queues `LOGIN_START` with a fresh nonce.
    pub fn start(&mut self, net: &mut Net, token: usize, name: &str, rng: &mut Rng) {
        rng.fill(&mut self.nonce);
        let id = net.next_id(token);
        client::login_start(net.out(token), id, name, &self.nonce);
        self.state = LoginState::AwaitChallenge;
    }

    /// Feeds a frame that belongs to the login; returns true when the login has just succeeded.
    pub fn on_frame(
        &mut self,
        net: &mut Net,
        token: usize,
        name: &str,
        creds: &Credentials,
        frame: &ServerFrame,
    ) -> Result<bool, String> {
        match (self.state, frame) {
            (LoginState::AwaitChallenge, ServerFrame::LoginChallenge { salt, iterations, nonce }) => {
                if !nonce.starts_with(&self.nonce) || nonce.len() != self.nonce.len() + scram::SERVER_NONCE_LEN {
                    return Err(format!("login of {name}: the challenge nonce does not extend ours"));
                }
                if *salt != creds.salt || *iterations != creds.iterations {
                    return Err(format!("login of {name}: the challenge has another salt or iteration count"));
                }
                self.auth = scram::auth_message(name, &self.nonce, salt, *iterations, nonce);
                let proof = scram::client_proof(&creds.keys, &self.auth);
                let id = net.next_id(token);
                client::login_finish(net.out(token), id, &proof, self.device_id, "im-bench");
                self.state = LoginState::AwaitOk;
                Ok(false)
            }
            (LoginState::AwaitOk, ServerFrame::LoginOk { server_signature, username }) => {
                if *server_signature != scram::server_signature(&creds.keys.server, &self.auth) {
                    return Err(format!("login of {name}: wrong server signature"));
                }
                if !username.eq_ignore_ascii_case(name) {
                    return Err(format!("login of {name}: LOGIN_OK names {username}"));
                }
                self.state = LoginState::LoggedIn;
                Ok(true)
            }
            (state, other) => Err(unexpected(&format!("login of {name} ({state:?})"), other)),
        }
    }
}

/// Registers every name through the protocol, pipelined over a few connections.
pub fn register_users(net: &mut Net, common: &Common, creds: &Credentials, names: &[String]) -> Result<(), String> {
    let mut phase = Registrar { creds, names, conns: Vec::new(), next: 0, done: 0 };
    for c in 0..REGISTER_CONNS.min(names.len()) {
        let token = net.connect(common.addr, c).map_err(|e| format!("connect to {}: {e}", common.addr))?;
        let id = net.next_id(token);
        client::hello(net.out(token), id, PROTOCOL_VERSION);
        phase.conns.push((token, VecDeque::new()));
    }
    for c in 0..phase.conns.len() {
        phase.refill(net, c);
    }
    let result = drive(net, &mut phase, common.setup_deadline(), "registering users");
    for (token, _) in &phase.conns {
        net.close(*token);
    }
    result
}

struct Registrar<'a> {
    creds: &'a Credentials,
    names: &'a [String],
    /// Per connection: its token and the users whose REGISTER awaits an answer.
    conns: Vec<(usize, VecDeque<usize>)>,
    next: usize,
    done: usize,
}

impl Registrar<'_> {
    fn refill(&mut self, net: &mut Net, c: usize) {
        let (token, waiting) = &mut self.conns[c];
        while waiting.len() < REGISTER_WINDOW && self.next < self.names.len() {
            let reg = Registration {
                username: &self.names[self.next],
                salt: &self.creds.salt,
                iterations: self.creds.iterations,
                stored_key: &self.creds.keys.stored,
                server_key: &self.creds.keys.server,
            };
            let id = net.next_id(*token);
            client::register(net.out(*token), id, &reg);
            waiting.push_back(self.next);
            self.next += 1;
        }
    }
}

impl Phase for Registrar<'_> {
    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], _now: Instant) -> Result<usize, String> {
        let c = net.tag(token);
        let used = frames(data, |_, frame| match frame {
            ServerFrame::HelloOk { .. } => Ok(()),
            ServerFrame::Ok => {
                self.conns[c].1.pop_front();
                self.done += 1;
                Ok(())
            }
            other => {
                let user = self.conns[c].1.front().map_or("?", |&i| self.names[i].as_str());
                Err(unexpected(&format!("REGISTER {user}"), &other))
            }
        })?;
        self.refill(net, c);
        Ok(used)
    }

    fn done(&self) -> bool {
        self.done == self.names.len()
    }
}

/// Logged-in connections, one per user, in the order of the names given.
pub struct Sessions {
    pub tokens: Vec<usize>,
    /// Per user: the highest item id (message or friend event) pushed to it so far.
    pub max_item: Vec<u64>,
}

/// Opens one connection per name, logs each in and waits for its `SYNC_DONE`. At most
/// `common.concurrency` logins are in progress at once, so the listen backlog never overflows.
pub fn login_all(
    net: &mut Net,
    common: &Common,
    creds: &Credentials,
    names: &[String],
    rng: &mut Rng,
) -> Result<Sessions, String> {
    let flows = names.iter().map(|_| LoginFlow::default()).collect();
    log_in(net, common, creds, names, flows, rng)
}

/// Logs one user in on several devices at once, one connection per device id, each waiting
/// for its `SYNC_DONE` as in [`login_all`]. The sessions are in the order of the ids given.
pub fn login_devices(
    net: &mut Net,
    common: &Common,
    creds: &Credentials,
    name: &str,
    device_ids: &[u64],
    rng: &mut Rng,
) -> Result<Sessions, String> {
    let names = vec![name.to_string(); device_ids.len()];
    let flows = device_ids.iter().map(|&id| LoginFlow::for_device(id)).collect();
    log_in(net, common, creds, &names, flows, rng)
}

/// Logs in connection `i` as `names[i]` with `flows[i]` (which names its device).
fn log_in(
    net: &mut Net,
    common: &Common,
    creds: &Credentials,
    names: &[String],
    flows: Vec<LoginFlow>,
    rng: &mut Rng,
) -> Result<Sessions, String> {
    let mut phase = LoginAll {
        common,
        creds,
        names,
        rng,
        flows,
        tokens: vec![usize::MAX; names.len()],
        max_item: vec![0; names.len()],
        next: 0,
        active: 0,
        done: 0,
    };
    drive(net, &mut phase, common.setup_deadline(), "logging users in")?;
    Ok(Sessions { tokens: phase.tokens, max_item: phase.max_item })
}

struct LoginAll<'a> {
    common: &'a Common,
    creds: &'a Credentials,
    names: &'a [String],
    rng: &'a mut Rng,
    flows: Vec<LoginFlow>,
    tokens: Vec<usize>,
    max_item: Vec<u64>,
    next: usize,
    active: usize,
    done: usize,
}

impl Phase for LoginAll<'_> {
    fn tick(&mut self, net: &mut Net, _now: Instant) -> Result<(), String> {
        while self.active < self.common.concurrency && self.next < self.names.len() {
            let i = self.next;
            let token =
                net.connect(self.common.addr, i).map_err(|e| format!("connect to {}: {e}", self.common.addr))?;
            let id = net.next_id(token);
            client::hello(net.out(token), id, PROTOCOL_VERSION);
            self.flows[i].start(net, token, &self.names[i], self.rng);
            self.tokens[i] = token;
            self.next += 1;
            self.active += 1;
        }
        Ok(())
    }

    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], _now: Instant) -> Result<usize, String> {
        let i = net.tag(token);
        if self.tokens.get(i) != Some(&token) {
            // A connection of an earlier step: its bytes wait for the step that owns it.
            return Ok(0);
        }
        let name = &self.names[i];
        let flow = &mut self.flows[i];
        let mut synced = false;
        let used = frames(data, |_, frame| {
            match &frame {
                ServerFrame::HelloOk { .. } | ServerFrame::Presence { .. } | ServerFrame::GroupEvent { .. } => {}
                ServerFrame::Deliver { message_id, .. } | ServerFrame::FriendEvent { message_id, .. } => {
                    self.max_item[i] = self.max_item[i].max(*message_id);
                }
                ServerFrame::SyncDone { .. } if flow.state == LoginState::LoggedIn => synced = true,
                other => {
                    flow.on_frame(net, token, name, self.creds, other)?;
                }
            }
            Ok(())
        })?;
        if synced {
            self.active -= 1;
            self.done += 1;
        }
        Ok(used)
    }

    fn done(&self) -> bool {
        self.done == self.names.len()
    }
}

/// Makes each pair of logged-in users friends: A asks B, then B asks A (outcome "now friends").
/// `pairs` holds (token A, name A, token B, name B). Returns, per token, the highest
/// `FRIEND_EVENT` id it was pushed.
pub fn befriend(
    net: &mut Net,
    common: &Common,
    pairs: &[(usize, &str, usize, &str)],
) -> Result<HashMap<usize, u64>, String> {
    let mut sides = HashMap::new();
    for (p, &(a, _, b, _)) in pairs.iter().enumerate() {
        sides.insert(a, (p, Side::Asker));
        sides.insert(b, (p, Side::Answerer));
        let id = net.next_id(a);
        client::friend_request(net.out(a), id, pairs[p].3);
    }
    let mut phase = Befriend { pairs, sides, done: 0, max_item: HashMap::new() };
    drive(net, &mut phase, common.setup_deadline(), "making friends")?;
    Ok(phase.max_item)
}

#[derive(Clone, Copy)]
enum Side {
    Asker,
    Answerer,
}

struct Befriend<'a> {
    pairs: &'a [(usize, &'a str, usize, &'a str)],
    sides: HashMap<usize, (usize, Side)>,
    done: usize,
    max_item: HashMap<usize, u64>,
}

impl Phase for Befriend<'_> {
    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], _now: Instant) -> Result<usize, String> {
        let (p, side) = self.sides[&token];
        let (_, name_a, b, _) = self.pairs[p];
        frames(data, |_, frame| {
            match (side, &frame) {
                (_, ServerFrame::Presence { .. }) => {}
                (_, ServerFrame::FriendEvent { message_id, .. }) => {
                    let max = self.max_item.entry(token).or_default();
                    *max = (*max).max(*message_id);
                }
                (Side::Asker, ServerFrame::FriendRequestOk { became_friends: false }) => {
                    let id = net.next_id(b);
                    client::friend_request(net.out(b), id, name_a);
                }
                (Side::Answerer, ServerFrame::FriendRequestOk { became_friends: true }) => self.done += 1,
                (_, other) => return Err(unexpected("FRIEND_REQUEST", other)),
            }
            Ok(())
        })
    }

    fn done(&self) -> bool {
        self.done == self.pairs.len()
    }
}

/// Waits for `count` `OK` answers on one connection, ignoring pushes.
pub fn expect_oks(net: &mut Net, common: &Common, token: usize, count: usize, what: &str) -> Result<(), String> {
    let mut phase = ExpectOks { token, left: count, what };
    drive(net, &mut phase, common.setup_deadline(), what)
}

struct ExpectOks<'a> {
    token: usize,
    left: usize,
    what: &'a str,
}

impl Phase for ExpectOks<'_> {
    fn on_data(&mut self, _net: &mut Net, token: usize, data: &[u8], _now: Instant) -> Result<usize, String> {
        frames(data, |_, frame| match frame {
            ServerFrame::Ok if token == self.token && self.left > 0 => {
                self.left -= 1;
                Ok(())
            }
            ServerFrame::Presence { .. } | ServerFrame::FriendEvent { .. } | ServerFrame::GroupEvent { .. } => Ok(()),
            other => Err(unexpected(self.what, &other)),
        })
    }

    fn done(&self) -> bool {
        self.left == 0
    }
}

/// Creates a group owned by the user logged in on `owner` and invites every name; returns its id.
pub fn create_group(net: &mut Net, common: &Common, owner: usize, members: &[String]) -> Result<u64, String> {
    let id = net.next_id(owner);
    client::group_create(net.out(owner), id, "im-bench");
    let mut phase = GroupSetup { owner, members, group_id: None, done: 0 };
    drive(net, &mut phase, common.setup_deadline(), "making the group")?;
    Ok(phase.group_id.unwrap_or(0))
}

struct GroupSetup<'a> {
    owner: usize,
    members: &'a [String],
    group_id: Option<u64>,
    done: usize,
}

impl Phase for GroupSetup<'_> {
    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], _now: Instant) -> Result<usize, String> {
        if token != self.owner {
            return frames(data, |_, _| Ok(()));
        }
        frames(data, |_, frame| {
            match frame {
                ServerFrame::GroupEvent { .. } | ServerFrame::Presence { .. } | ServerFrame::FriendEvent { .. } => {}
                ServerFrame::GroupCreated { group_id } => {
                    self.group_id = Some(group_id);
                    for name in self.members {
                        let id = net.next_id(self.owner);
                        client::group_invite(net.out(self.owner), id, group_id, name);
                    }
                }
                ServerFrame::Ok if self.group_id.is_some() => self.done += 1,
                other => return Err(unexpected("GROUP_CREATE/GROUP_INVITE", &other)),
            }
            Ok(())
        })
    }

    fn done(&self) -> bool {
        self.group_id.is_some() && self.done == self.members.len()
    }
}

/// Where a bench sender's messages go.
pub enum Dest {
    User(String),
    Group(u64),
}

/// im-server as a [`Wire`]: `SEND`/`GROUP_SEND` answered by `SENT`, pushed as `DELIVER`.
pub struct ImWire {
    pub dests: Vec<Dest>,
}

impl Wire for ImWire {
    fn send(&mut self, net: &mut Net, token: usize, dest: usize, seq: u64, body: &str) {
        let id = net.next_id(token);
        // Every sender is its own user, so the sequence number is a fresh client_msg_id.
        match &self.dests[dest] {
            Dest::User(to) => client::send(net.out(token), id, to, seq + 1, body),
            Dest::Group(group_id) => client::group_send(net.out(token), id, *group_id, seq + 1, body),
        }
    }

    fn sender_frames<F: FnMut(u64, Option<i64>) -> Result<(), String>>(
        &mut self,
        data: &[u8],
        mut on_ack: F,
    ) -> Result<usize, String> {
        frames(data, |_, frame| match frame {
            ServerFrame::Sent { message_id, .. } => on_ack(message_id, None),
            ServerFrame::Presence { .. }
            | ServerFrame::FriendEvent { .. }
            | ServerFrame::GroupEvent { .. }
            | ServerFrame::SyncDone { .. } => Ok(()),
            other => Err(unexpected("SEND", &other)),
        })
    }

    fn receiver_frames<'a, F: FnMut(u64, &'a [u8]) -> Result<(), String>>(
        &mut self,
        data: &'a [u8],
        mut on_deliver: F,
    ) -> Result<usize, String> {
        frames(data, |_, frame| match frame {
            ServerFrame::Deliver { message_id, body, .. } => on_deliver(message_id, body.as_bytes()),
            ServerFrame::Ok
            | ServerFrame::Presence { .. }
            | ServerFrame::FriendEvent { .. }
            | ServerFrame::GroupEvent { .. }
            | ServerFrame::SyncDone { .. } => Ok(()),
            other => Err(unexpected("receiving", &other)),
        })
    }

    fn receiver_ack(&mut self, net: &mut Net, token: usize, message_id: u64) {
        let id = net.next_id(token);
        client::ack(net.out(token), id, message_id);
    }

    fn has_message_ids(&self) -> bool {
        true
    }
}

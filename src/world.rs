//! In-memory state of the live server: who is online on which connections, their friends and
//! groups, and the window of recent client message ids.
//!
//! Everything here is derived from the store and rebuilt from it when needed (at login, and
//! after a rolled-back transaction), so that hot-path checks — is this a friend, is this a
//! member, who is online — never touch the database.

use crate::limits::{RegistrationThrottle, TokenBucket};
use crate::login_throttle::LoginThrottle;
pub use crate::retry::RetryWindow;
use crate::store::{DeviceId, GroupId, MessageId, Store, StoreResult, UserId};
// foldhash: several times faster than SipHash on these integer keys, and seeded per process,
// so keys chosen by clients (client_msg_id) cannot be aimed at collisions.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

/// A connection's slab key and mio token.
pub type Token = usize;

/// A current friend of an online user.
#[derive(Debug, Clone)]
pub struct Friend {
    pub id: UserId,
    /// Shared, so that handing a name to a frame encoder costs no allocation.
    pub name: Rc<str>,
}

/// A logged-in user and what the hot path needs to know about them.
#[derive(Debug)]
pub struct OnlineUser {
    pub name: Rc<str>,
    pub sessions: Vec<Token>,
    /// The device of each session, in the same order.
    pub devices: Vec<DeviceId>,
    /// Current friends by lowercase name.
    pub friends: HashMap<String, Friend>,
    pub groups: HashSet<GroupId>,
    /// Sends allowed now; shared by all of the user's connections.
    pub send_bucket: TokenBucket,
}

impl OnlineUser {
    pub fn friend_by_name(&self, name: &str) -> Option<&Friend> {
        // Usernames are at most 32 ASCII bytes: lowercase on the stack, no allocation.
        let mut key = [0u8; 32];
        let key = key.get_mut(..name.len())?;
        key.copy_from_slice(name.as_bytes());
        key.make_ascii_lowercase();
        self.friends.get(std::str::from_utf8(key).ok()?)
    }

    pub fn is_friend(&self, id: UserId) -> bool {
        self.friends.values().any(|f| f.id == id)
    }
}

/// A group with at least one online member.
#[derive(Debug, Default)]
pub struct LiveGroup {
    pub name: String,
    pub online: HashSet<UserId>,
}

/// What a login loads from the store for the world.
pub struct LoginSnapshot {
    pub friends: Vec<Friend>,
    pub groups: Vec<(GroupId, String)>,
}

/// The ids of a recipient's undelivered direct messages, ascending.
#[derive(Debug, Default)]
pub struct Undelivered {
    pub ids: VecDeque<MessageId>,
    /// False when the store held more than were loaded: an ACK must then reload them.
    pub complete: bool,
}

/// The live state of the server.
#[derive(Debug, Default)]
pub struct World {
    pub users: HashMap<UserId, OnlineUser>,
    pub groups: HashMap<GroupId, LiveGroup>,
    pub retries: RetryWindow,
    pub registrations: RegistrationThrottle,
    pub failed_logins: LoginThrottle,
    /// Undelivered direct messages per recipient, read from the store on first need and kept
    /// up to date by SEND and ACK (for `--max-offline`).
    pub undelivered: HashMap<UserId, Undelivered>,
    /// Online users whose conversations changed (a friend or a group gained or lost) in this
    /// iteration: their syncing connections reload their backlog's sources.
    pub sources_changed: HashSet<UserId>,
    /// Connections to close once this batch has committed, each with the reason: a removed
    /// device, a changed password, a deleted account (their ERROR was staged with the change).
    pub close_after_commit: Vec<(Token, crate::session::CloseReason)>,
}

/// Whether a session change changed the user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    CameOnline,
    WentOffline,
    Unchanged,
}

impl World {
    pub fn new(retry_window: usize) -> Self {
        World { retries: RetryWindow::new(retry_window), ..Default::default() }
    }

    pub fn user(&self, id: UserId) -> Option<&OnlineUser> {
        self.users.get(&id)
    }

    pub fn is_online(&self, id: UserId) -> bool {
        self.users.contains_key(&id)
    }

    /// The connections of a user (none when offline).
    pub fn sessions(&self, id: UserId) -> &[Token] {
        self.users.get(&id).map(|u| u.sessions.as_slice()).unwrap_or(&[])
    }

    /// The sessions of a user that speak for a device.
    pub fn sessions_of_device(&self, user: UserId, device: DeviceId) -> Vec<Token> {
        let Some(u) = self.users.get(&user) else { return Vec::new() };
        u.sessions.iter().zip(&u.devices).filter(|&(_, &d)| d == device).map(|(&t, _)| t).collect()
    }

    /// Loads what the world needs for a user's first session from the store.
    pub fn snapshot(store: &Store, user: UserId) -> StoreResult<LoginSnapshot> {
        let friends = store
            .contacts(user)?
            .into_iter()
            .filter(|c| c.state == crate::store::ContactState::Friends)
            .map(|c| Friend { id: c.peer, name: c.name.into() })
            .collect();
        let mut groups = Vec::new();
        for m in store.memberships(user)? {
            if let Some(info) = store.group_name(m.group)? {
                groups.push((m.group, info));
            }
        }
        Ok(LoginSnapshot { friends, groups })
    }

    /// Adds a session; on the user's first session `load` supplies the snapshot.
    pub fn start_session(
        &mut self,
        user: UserId,
        name: &str,
        (token, device): (Token, DeviceId),
        now: Instant,
        load: impl FnOnce() -> StoreResult<LoginSnapshot>,
    ) -> StoreResult<PresenceChange> {
        if let Some(u) = self.users.get_mut(&user) {
            u.sessions.push(token);
            u.devices.push(device);
            return Ok(PresenceChange::Unchanged);
        }
        let snapshot = load()?;
        let mut online = OnlineUser {
            name: name.into(),
            send_bucket: TokenBucket::full(now),
            sessions: vec![token],
            devices: vec![device],
            friends: HashMap::with_capacity(snapshot.friends.len()),
            groups: HashSet::with_capacity(snapshot.groups.len()),
        };
        for f in snapshot.friends {
            online.friends.insert(f.name.to_ascii_lowercase(), f);
        }
        for (group, group_name) in snapshot.groups {
            online.groups.insert(group);
            let live = self.groups.entry(group).or_insert_with(|| LiveGroup { name: group_name, ..Default::default() });
            live.online.insert(user);
        }
        self.users.insert(user, online);
        Ok(PresenceChange::CameOnline)
    }

    /// Removes a session; the last one takes the user offline.
    pub fn end_session(&mut self, user: UserId, token: Token) -> PresenceChange {
        let Some(u) = self.users.get_mut(&user) else {
            return PresenceChange::Unchanged;
        };
        if let Some(k) = u.sessions.iter().position(|&t| t == token) {
            u.sessions.swap_remove(k);
            u.devices.swap_remove(k);
        }
        if !u.sessions.is_empty() {
            return PresenceChange::Unchanged;
        }
        let u = self.users.remove(&user).expect("checked above");
        for group in u.groups {
            self.leave_live_group(group, user);
        }
        PresenceChange::WentOffline
    }

    fn leave_live_group(&mut self, group: GroupId, user: UserId) {
        if let Some(live) = self.groups.get_mut(&group) {
            live.online.remove(&user);
            if live.online.is_empty() {
                self.groups.remove(&group);
            }
        }
    }

    /// Records a new friendship on whichever side is online.
    pub fn add_friendship(&mut self, a: (UserId, &str), b: (UserId, &str)) {
        for (me, other) in [(a, b), (b, a)] {
            if let Some(u) = self.users.get_mut(&me.0) {
                u.friends.insert(other.1.to_ascii_lowercase(), Friend { id: other.0, name: other.1.into() });
                self.sources_changed.insert(me.0);
            }
        }
    }

    pub fn remove_friendship(&mut self, a: UserId, b: UserId) {
        for (me, other) in [(a, b), (b, a)] {
            if let Some(u) = self.users.get_mut(&me) {
                u.friends.retain(|_, f| f.id != other);
            }
        }
    }

    /// Records that an online user joined a group.
    pub fn join_group(&mut self, user: UserId, group: GroupId, group_name: &str) {
        if let Some(u) = self.users.get_mut(&user) {
            u.groups.insert(group);
            self.sources_changed.insert(user);
            let live = self
                .groups
                .entry(group)
                .or_insert_with(|| LiveGroup { name: group_name.to_string(), ..Default::default() });
            live.online.insert(user);
        }
    }

    pub fn leave_group(&mut self, user: UserId, group: GroupId) {
        if let Some(u) = self.users.get_mut(&user) {
            u.groups.remove(&group);
            self.sources_changed.insert(user);
            self.leave_live_group(group, user);
        }
    }

    pub fn is_member(&self, user: UserId, group: GroupId) -> bool {
        self.users.get(&user).is_some_and(|u| u.groups.contains(&group))
    }

    /// Online members of a group.
    pub fn online_members(&self, group: GroupId) -> impl Iterator<Item = UserId> + '_ {
        self.groups.get(&group).into_iter().flat_map(|g| g.online.iter().copied())
    }

    /// Reloads friends and groups of every online user from the store, after a transaction
    /// whose in-memory effects were applied was rolled back.
    pub fn resync(&mut self, store: &Store) -> StoreResult<()> {
        type Sessions = Vec<(Token, DeviceId)>;
        let users: Vec<(UserId, Rc<str>, Sessions)> = self
            .users
            .iter()
            .map(|(id, u)| (*id, u.name.clone(), u.sessions.iter().copied().zip(u.devices.iter().copied()).collect()))
            .collect();
        self.users.clear();
        self.groups.clear();
        let now = Instant::now();
        for (id, name, sessions) in users {
            for session in sessions {
                self.start_session(id, &name, session, now, || World::snapshot(store, id))?;
            }
            self.sources_changed.insert(id);
        }
        self.undelivered.clear();
        self.retries.rebuild(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> StoreResult<LoginSnapshot> {
        Ok(LoginSnapshot { friends: vec![], groups: vec![(1, "lobby".into())] })
    }

    #[test]
    fn presence_changes_only_on_first_and_last_session() {
        let mut w = World::new(10);
        assert_eq!(w.start_session(5, "al", (1, 10), Instant::now(), empty).unwrap(), PresenceChange::CameOnline);
        assert_eq!(w.start_session(5, "al", (2, 11), Instant::now(), empty).unwrap(), PresenceChange::Unchanged);
        assert_eq!(w.sessions_of_device(5, 11), vec![2]);
        assert_eq!(w.online_members(1).collect::<Vec<_>>(), vec![5]);
        assert_eq!(w.end_session(5, 1), PresenceChange::Unchanged);
        assert_eq!(w.end_session(5, 2), PresenceChange::WentOffline);
        assert_eq!(w.end_session(5, 2), PresenceChange::Unchanged);
        assert!(w.groups.is_empty());
    }
}

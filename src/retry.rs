//! The retry window: recent sends by `(sender, client_msg_id)`, so that a client retrying
//! after a lost acknowledgement gets its original `SENT` and nothing is stored twice.
//!
//! The check runs on every send, so it must stay in cache: each sender's recent sends are a
//! short ring of its own (found through a small map of senders), scanned newest first, and
//! skipped entirely when the id is above every id the sender has used (clients count up).
//! One global table keyed by `(sender, client_msg_id)` cost a cache miss per insert, lookup
//! and eviction: 9-10% of the server under `im-bench pairs` (perf).
//! Memory is bounded twice: per sender, and for all senders together, oldest first.

use crate::store::{MessageId, Store, StoreResult, UserId};
use foldhash::{HashMap, HashMapExt};
use std::collections::VecDeque;

/// Sends remembered per sender: more than any client keeps unacknowledged.
pub const PER_SENDER: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Recent {
    client_msg_id: u64,
    id: MessageId,
    sent_at: i64,
}

#[derive(Debug, Default)]
struct SenderWindow {
    highest: u64,
    recent: VecDeque<Recent>,
}

/// The remembered sends of every sender, at most `capacity` in all.
#[derive(Debug, Default)]
pub struct RetryWindow {
    capacity: usize,
    senders: HashMap<UserId, SenderWindow>,
    /// Every remembered send in the order stored, for the global bound.
    order: VecDeque<(UserId, u64)>,
}

impl RetryWindow {
    pub fn new(capacity: usize) -> Self {
        RetryWindow { capacity, senders: HashMap::new(), order: VecDeque::new() }
    }

    /// The stored message id and timestamp of an earlier send with this key, if remembered.
    pub fn get(&self, sender: UserId, client_msg_id: u64) -> Option<(MessageId, i64)> {
        let window = self.senders.get(&sender)?;
        if client_msg_id > window.highest {
            return None;
        }
        window.recent.iter().rev().find(|r| r.client_msg_id == client_msg_id).map(|r| (r.id, r.sent_at))
    }

    pub fn remember(&mut self, sender: UserId, client_msg_id: u64, id: MessageId, sent_at: i64) {
        if self.capacity == 0 {
            return;
        }
        let window = self.senders.entry(sender).or_default();
        if window.recent.len() == PER_SENDER {
            window.recent.pop_front();
        }
        window.recent.push_back(Recent { client_msg_id, id, sent_at });
        window.highest = window.highest.max(client_msg_id);
        self.order.push_back((sender, client_msg_id));
        while self.order.len() > self.capacity {
            let Some((old_sender, old_id)) = self.order.pop_front() else { break };
            self.evict(old_sender, old_id);
        }
    }

    /// Drops the globally oldest send if its sender still holds it (the per-sender bound may
    /// have dropped it already), and the sender once nothing of theirs is left.
    fn evict(&mut self, sender: UserId, client_msg_id: u64) {
        let Some(window) = self.senders.get_mut(&sender) else { return };
        if window.recent.front().is_some_and(|r| r.client_msg_id == client_msg_id) {
            window.recent.pop_front();
        }
        if window.recent.is_empty() {
            self.senders.remove(&sender);
        }
    }

    /// Refills the window from the store's newest sends.
    pub fn rebuild(&mut self, store: &Store) -> StoreResult<()> {
        self.senders.clear();
        self.order.clear();
        let mut recent = store.recent_sends(self.capacity)?;
        recent.reverse();
        for s in recent {
            self.remember(s.sender, s.client_msg_id, s.id, s.sent_at);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_sender_and_in_all() {
        let mut r = RetryWindow::new(3);
        r.remember(1, 10, 100, 0);
        r.remember(2, 10, 101, 0);
        assert_eq!(r.get(1, 10), Some((100, 0)));
        assert_eq!(r.get(2, 10), Some((101, 0)));
        assert_eq!(r.get(1, 11), None);
        r.remember(1, 11, 102, 0);
        r.remember(1, 12, 103, 0);
        // Four sends, room for three: the oldest (sender 1, id 10) is gone.
        assert_eq!(r.get(1, 10), None);
        assert_eq!(r.get(1, 12), Some((103, 0)));
    }

    #[test]
    fn ids_need_not_increase() {
        let mut r = RetryWindow::new(100);
        r.remember(1, 50, 1, 0);
        r.remember(1, 7, 2, 0);
        assert_eq!(r.get(1, 7), Some((2, 0)));
        assert_eq!(r.get(1, 50), Some((1, 0)));
        assert_eq!(r.get(1, 8), None);
    }

    #[test]
    fn each_sender_keeps_at_most_its_own_share() {
        let mut r = RetryWindow::new(10_000);
        for n in 0..(PER_SENDER as u64 + 5) {
            r.remember(1, n, n as i64, 0);
        }
        assert_eq!(r.get(1, 4), None);
        assert_eq!(r.get(1, 5), Some((5, 0)));
        // The evicted global entries of sender 1 are skipped when their turn comes.
        for n in 0..10_000u64 {
            r.remember(2, n, n as i64, 0);
        }
        assert_eq!(r.get(1, PER_SENDER as u64 + 4), None);
        assert!(r.order.len() <= 10_000);
    }
}

//! Which conversation a stored message belongs to, packed into one integer column.

use super::{GroupId, UserId};

/// A conversation key. Direct pairs are `(low << 32) | high` for the two user ids in order,
/// a user's own feed of friend events is the pair of the user with itself (a pair that no chat
/// can have), and a group is its negated id. One `(channel, id)` index then serves history and
/// offline delivery of every kind of conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Channel(pub i64);

impl Channel {
    pub fn direct(a: UserId, b: UserId) -> Channel {
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        Channel((low << 32) | high)
    }

    pub fn events_of(user: UserId) -> Channel {
        Channel((user << 32) | user)
    }

    pub fn group(group: GroupId) -> Channel {
        Channel(-group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_distinct_and_symmetric() {
        assert_eq!(Channel::direct(3, 9), Channel::direct(9, 3));
        assert_ne!(Channel::direct(3, 9), Channel::direct(3, 10));
        assert_ne!(Channel::events_of(3), Channel::direct(3, 4));
        assert!(Channel::group(1).0 < 0);
    }

    /// The values are stored in every message row: the file format pins them.
    #[test]
    fn channel_values_are_the_documented_ones() {
        assert_eq!(Channel::direct(9, 3).0, (3 << 32) | 9);
        assert_eq!(Channel::events_of(5).0, (5 << 32) | 5);
        assert_eq!(Channel::group(7).0, -7);
    }

    /// Every pair of users, every user's feed and every group has a channel of its own.
    #[test]
    fn no_two_conversations_share_a_channel() {
        let mut seen = std::collections::HashMap::new();
        for a in 1..=6 {
            for b in a + 1..=6 {
                assert_eq!(seen.insert(Channel::direct(a, b), (a, b)), None, "pair {a}, {b}");
            }
            assert_eq!(seen.insert(Channel::events_of(a), (a, a)), None, "feed of {a}");
            assert_eq!(seen.insert(Channel::group(a), (-a, -a)), None, "group {a}");
        }
    }
}

-- im-server schema, version 3. Applied to a new database by src/store/schema.rs, which sets
-- PRAGMA user_version to the version. Designed for the write path (README.md, "Storage"): a
-- message insert appends to one table and touches no other B-tree; which messages belong to
-- a conversation is written in bulk (channel_blocks); delivery and read state are cursors
-- updated in place (one narrow row per device), never a row per message per recipient.

-- Server-wide values, such as the secret behind fake login salts.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- Accounts. Only the SCRAM verifier is kept: salt, iterations, StoredKey, ServerKey.
CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL,
    name_key        TEXT    NOT NULL UNIQUE, -- lowercase name: names are unique ignoring case
    salt            BLOB    NOT NULL,
    iterations      INTEGER NOT NULL,
    stored_key      BLOB    NOT NULL,
    server_key      BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    -- Set by `im-server ctl disable`: the account cannot log in until enabled again.
    disabled_at     INTEGER,
    -- Set when the account is deleted: its name shows as deleted in others' history, and is
    -- free to register again after the cooling period.
    deleted_at      INTEGER
);

-- Where a user's first device starts: the newest message id at registration (or, in a
-- database from schema version 1, the user's one delivery cursor then).
CREATE TABLE account_starts (
    user_id  INTEGER PRIMARY KEY REFERENCES users(id),
    start_id INTEGER NOT NULL
);

-- A user's devices, each with its own delivery position: every item for the user at or below
-- delivered_up_to has been acknowledged by that device. id is the server's number for the
-- device (messages.device); client_id is the u64 the client chose. Every ACK updates one row
-- by its rowid, so the UNIQUE index on (user_id, client_id) is not touched by it.
CREATE TABLE devices (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users(id),
    client_id       INTEGER NOT NULL, -- u64 stored as i64
    name            TEXT    NOT NULL,
    delivered_up_to INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL, -- milliseconds: last login or ACK
    UNIQUE (user_id, client_id)
);

-- One row per direction for each pair of users who are or were friends. A former friendship
-- (state 0) keeps the conversation: its history stays readable by both.
-- read_up_to is the read receipt: user_id has read peer_id's messages up to that id.
CREATE TABLE contacts (
    user_id    INTEGER NOT NULL REFERENCES users(id),
    peer_id    INTEGER NOT NULL REFERENCES users(id),
    state      INTEGER NOT NULL, -- 1 friends, 0 former friends
    since      INTEGER NOT NULL,
    read_up_to INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, peer_id)
) WITHOUT ROWID;

-- Pending friend requests; a row is removed when answered.
CREATE TABLE friend_requests (
    from_id    INTEGER NOT NULL REFERENCES users(id),
    to_id      INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (from_id, to_id)
) WITHOUT ROWID;
CREATE INDEX friend_requests_by_target ON friend_requests (to_id, from_id);

CREATE TABLE groups (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    owner_id   INTEGER REFERENCES users(id), -- NULL for the built-in lobby
    created_at INTEGER NOT NULL
);

-- joined_after is the newest message id when the member joined: older group messages are not
-- delivered to them. A member's cursor in the group is the larger of it and their
-- cursors.delivered_up_to, so an ACK updates one row however many groups the user is in.
CREATE TABLE group_members (
    group_id        INTEGER NOT NULL REFERENCES groups(id),
    user_id         INTEGER NOT NULL REFERENCES users(id),
    joined_at       INTEGER NOT NULL,
    joined_after    INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_members_by_user ON group_members (user_id, group_id);

-- Every message of every conversation, and every friend event, in one append-only table with
-- no secondary index. The id is assigned by the server, strictly increasing. channel names
-- the conversation (src/store/channel.rs): a direct pair, a group, or a user's event feed.
-- sender has no foreign key on purpose: the check would cost a lookup per insert on the hot
-- path, and senders are never deleted.
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    channel       INTEGER NOT NULL,
    sender        INTEGER NOT NULL,
    client_msg_id INTEGER NOT NULL, -- the sender's id for retries (u64 stored as i64)
    kind          INTEGER NOT NULL, -- src/store/messages.rs MessageKind: text, events, receipts
    sent_at       INTEGER NOT NULL, -- milliseconds since the Unix epoch
    body          BLOB    NOT NULL,
    device        INTEGER NOT NULL DEFAULT 0 -- devices.id of the device that made it (0: none)
);

-- Which ids belong to each channel, as posting lists written in bulk (src/store/posting.rs):
-- one row per channel per flush, ids delta-encoded as varints. Ids above meta.indexed_up_to
-- are not here yet; the server keeps them in memory and rebuilds them from messages at start.
CREATE TABLE channel_blocks (
    channel  INTEGER NOT NULL,
    last_id  INTEGER NOT NULL,
    first_id INTEGER NOT NULL,
    ids      BLOB    NOT NULL,
    PRIMARY KEY (channel, last_id)
) WITHOUT ROWID;

-- Group 1 is the lobby, which every user joins at registration.
INSERT INTO groups (id, name, owner_id, created_at) VALUES (1, 'lobby', NULL, 0);

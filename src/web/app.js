// im-server's browser client: what the page sends and how it takes what it receives — login
// and reconnection, the pushed items, the user's requests. protocol.js is the wire format,
// scram.js the login math, connection.js the socket, state.js the state and what the browser
// keeps of it, view.js the DOM.
//
// Elements tests rely on carry a data-test attribute:
//   login form:   login-form, username, password, remember, login, register, login-status
//   header:       me, connection (data-state="connecting|online|offline"), logout, notice
//   friends:      friend-name, friend-add, request-in-<name>, request-accept-<name>,
//                 request-decline-<name>, request-out-<name>
//   list:         conversations, conversation-<name> (data-online="1|0"), unread-<name>,
//                 conversation-group-<id> (data-name="<group name>"), unread-group-<id>,
//                 group-name, group-create
//   conversation: conversation, conversation-title, conversation-status, back, invite-name,
//                 invite, group-leave (click twice), messages, history-more, message (data-id, data-from, data-mine,
//                 data-state="sending|sent|read|failed" on your own), event, composer, send
// Names in attributes are usernames as registered (letters, digits, _ . -).

import { Direction, Err, Friend, GroupEvent, ITEM_OPCODES, Kind, Op, VERSION } from './protocol.js';
import * as scram from './scram.js';
import { Closed, Connection, ServerError } from './connection.js';
import {
  conversation, directKey, groupKey, keysFromStorage, keysToStorage, loadOutbox, loadView, lower, maxId,
  outboxKey, peerReadUpTo, saveOutbox, saveView, SESSION_KEY, state, storage, viewKey, viewOf,
} from './state.js';
import {
  $, actions, notice, render, renderConversation, renderDevices, renderList, setConnection, setLoginBusy,
  setLoginStatus, showChat, showLogin,
} from './view.js';

const HISTORY_PAGE = 40;
// Where app.css shows one pane at a time.
const PHONE_WIDTH = window.matchMedia('(max-width: 720px)');
const GAP_PAGE = 200;
const ACK_DELAY_MS = 150;
const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 30000;
const PING_MAX_MS = 30000;

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

/** The sentence shown for a refused login or request. */
function explain(error) {
  if (error instanceof ServerError) {
    switch (error.code) {
      // Logged in, a failed proof is a wrong password typed to change it or delete the account.
      case Err.AUTH_FAILED: return state.online ? 'Wrong password.' : 'Wrong username or password.';
      case Err.USERNAME_TAKEN: return 'That username is taken.';
      case Err.INVALID_USERNAME: return 'A username is 1 to 32 letters, digits, _ . or -.';
      case Err.TOO_MANY_ATTEMPTS: return 'Too many failed attempts; try again.';
      case Err.LOGIN_THROTTLED:
      case Err.RATE_LIMITED:
        return `Too many attempts; wait ${Math.ceil((error.retryAfterMs || 1000) / 1000)} s and try again.`;
      case Err.TOO_MANY_DEVICES: return 'Your account has too many devices; remove one from another device.';
      case Err.TOO_MANY_SESSIONS: return 'You are logged in in too many places at once.';
      default: return error.message;
    }
  }
  return error.message || String(error);
}

/** Opens a connection and says HELLO; the connection's pushes and close come to this page. */
async function connect() {
  const conn = new Connection({
    onPush: (frame) => { if (state.conn === conn) onPush(frame); },
    onClose: (error) => { if (state.conn === conn) onClosed(error); },
  });
  state.conn = conn;
  state.online = false;
  state.synced = false;
  await conn.open();
  state.hello = await conn.request(Op.HELLO, { version: VERSION });
  startPing();
  return conn;
}

/**
 * Logs in as `username`, with `keys` kept from before or else derived from `password`
 * (once the challenge gives the salt). Registers first when asked. Resolves when LOGIN_OK's
 * signature checks; throws otherwise.
 */
async function login({ username, password = null, keys = null, register = false }) {
  const conn = await connect();
  if (register) {
    const salt = scram.randomBytes(16);
    const iterations = scram.registrationIterations(state.hello.min_kdf_iterations);
    setLoginStatus('Deriving your keys…');
    keys = await scram.deriveKeys(password, salt, iterations);
    await conn.request(Op.REGISTER, {
      username, salt, iterations, stored_key: keys.storedKey, server_key: keys.serverKey,
    });
  }
  const clientNonce = scram.randomBytes(24);
  const challenge = await conn.request(Op.LOGIN_START, { username, client_nonce: clientNonce });
  const { salt, iterations, nonce } = challenge;
  if (!scram.sameBytes(nonce.subarray(0, clientNonce.length), clientNonce)) {
    conn.close();
    throw new Error('The server answered another login.');
  }
  if (!keys || !scram.keysMatch(keys, salt, iterations)) {
    if (password === null) {
      conn.close();
      throw new ServerError({ code: Err.AUTH_FAILED, message: 'Your password changed; log in again.' });
    }
    if (!register) setLoginStatus('Checking your password…');
    keys = await scram.deriveKeys(password, salt, iterations);
  }
  const message = scram.authMessage(username, clientNonce, salt, iterations, nonce);
  const answer = await conn.request(Op.LOGIN_FINISH, {
    client_proof: await scram.clientProof(keys, message),
    device_id: state.device.id, device_name: state.device.name,
  });
  if (!scram.sameBytes(answer.server_signature, await scram.serverSignature(keys, message))) {
    conn.close();
    throw new Error('The server could not prove it knows your password; not logged in.');
  }
  return { conn, keys, username: answer.username };
}

/** After LOGIN_OK: the page shows the chat, and the backlog is being pushed. */
function loggedIn({ conn, keys, username }, remember) {
  const sameUser = state.me !== null && lower(state.me) === lower(username);
  if (!sameUser) resetUserState(username, remember);
  state.me = username;
  state.keys = keys;
  state.remember = remember;
  if (remember) storage.set(SESSION_KEY, keysToStorage(username, keys));
  else storage.remove(SESSION_KEY);
  saveOutbox();
  state.online = true;
  state.lastItem = 0n;
  state.ackable = 0n;
  state.acked = 0n;
  state.reconnectAttempt = 0;
  showChat();
  setConnection('online');
  for (const message of state.outbox) transmit(message);
  render();
  return conn;
}

function resetUserState(username, remember) {
  state.friends.clear();
  state.incoming.clear();
  state.outgoing.clear();
  state.groups.clear();
  state.convs.clear();
  state.current = null;
  $('#account').hidden = true;
  state.remember = remember;
  state.view = { convs: {}, peerRead: {}, gap: null };
  state.outbox = [];
  if (!username) return;
  loadView(username);
  loadOutbox(username);
}

async function submitLogin(register) {
  const username = $('[data-test=username]').value.trim();
  const password = $('[data-test=password]').value;
  const remember = $('[data-test=remember]').checked;
  if (!username || !password) {
    setLoginStatus('Enter a username and a password.');
    return;
  }
  if (!scram.available()) {
    setLoginStatus('This page needs a secure connection (https) to log in safely.');
    return;
  }
  setLoginBusy(true);
  setLoginStatus(register ? 'Creating your account…' : 'Logging in…');
  try {
    const session = await login({ username, password, register });
    $('[data-test=password]').value = '';
    setLoginStatus('');
    loggedIn(session, remember);
  } catch (error) {
    if (state.conn) state.conn.close();
    state.conn = null;
    setLoginStatus(explain(error));
  } finally {
    setLoginBusy(false);
  }
}

/** Logs in again with the keys in memory (after a lost connection) or in storage (a reload). */
async function resume() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  setConnection('connecting');
  const generation = state.generation;
  try {
    const session = await login({ username: state.me, keys: state.keys });
    if (generation !== state.generation) { session.conn.close(); return; }
    loggedIn(session, state.remember);
  } catch (error) {
    if (generation !== state.generation) return;
    const conn = state.conn;
    state.conn = null;
    if (conn) conn.close();
    if (error instanceof ServerError && [Err.AUTH_FAILED, Err.TOO_MANY_ATTEMPTS, Err.TOO_MANY_DEVICES,
      Err.INVALID_USERNAME].includes(error.code)) {
      forgetSession(explain(error));
    } else {
      scheduleReconnect(error instanceof ServerError ? error.retryAfterMs : null);
    }
  }
}

function scheduleReconnect(atLeastMs = null) {
  if (state.reconnectTimer || !state.keys) return;
  const base = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** state.reconnectAttempt);
  const delay = Math.max(atLeastMs || 0, base * (0.75 + Math.random() * 0.5));
  state.reconnectAttempt += 1;
  setConnection('offline', `Offline; trying again in ${Math.round(delay / 1000)} s.`);
  state.reconnectTimer = setTimeout(() => { state.reconnectTimer = null; resume(); }, delay);
}

function onClosed(error) {
  state.conn = null;
  state.online = false;
  state.synced = false;
  stopPing();
  clearTimeout(state.ackTimer);
  state.ackTimer = null;
  if (!state.keys) return;
  if (error instanceof ServerError && [Err.CREDENTIALS_CHANGED, Err.ACCOUNT_DELETED,
    Err.NO_SUCH_DEVICE].includes(error.code)) {
    const why = {
      [Err.CREDENTIALS_CHANGED]: 'Your password was changed on another device; log in again.',
      [Err.ACCOUNT_DELETED]: 'This account was deleted.',
      [Err.NO_SUCH_DEVICE]: 'This browser was removed from your account on another device.',
    }[error.code];
    forgetSession(why);
    return;
  }
  render();
  scheduleReconnect();
}

/** Ends the session on this page: back to the login form, nothing of the user kept. */
function forgetSession(why) {
  state.generation += 1;
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  if (state.me) {
    storage.remove(viewKey(state.me));
    storage.remove(outboxKey(state.me));
  }
  storage.remove(SESSION_KEY);
  const conn = state.conn;
  state.conn = null;
  if (conn) conn.close();
  stopPing();
  state.me = null;
  state.keys = null;
  state.online = false;
  state.outbox = [];
  resetUserState('', false);
  showLogin();
  setLoginStatus(why || '');
}

async function logout() {
  const conn = state.conn;
  if (conn && state.online) {
    try { await conn.request(Op.LOGOUT); } catch { /* closing anyway */ }
  }
  forgetSession('Logged out.');
}

function startPing() {
  stopPing();
  const idle = (state.hello ? state.hello.idle_timeout_secs : 120) * 1000;
  const every = Math.max(1000, Math.min(PING_MAX_MS, idle / 3));
  state.pingTimer = setInterval(() => {
    if (state.conn && state.conn.isOpen) state.conn.request(Op.PING).catch(() => {});
  }, every);
}

function stopPing() {
  clearInterval(state.pingTimer);
  state.pingTimer = null;
}

// ---------------------------------------------------------------------------------------------
// Pushes and items
// ---------------------------------------------------------------------------------------------

function onPush(frame) {
  const f = frame.fields;
  if (f === null) return; // an opcode this page does not know: a newer server
  if (ITEM_OPCODES.has(frame.opcode)) {
    if (f.message_id <= state.lastItem) return; // never twice (ids only grow on a connection)
    state.lastItem = f.message_id;
    state.ackable = maxId(state.ackable, f.message_id);
  }
  switch (frame.opcode) {
    case Op.DELIVER: onDeliver(f); break;
    case Op.FRIEND_EVENT: onFriendEvent(f); break;
    case Op.PRESENCE: onPresence(f); break;
    case Op.READ_RECEIPT: onReadReceipt(f); break;
    case Op.GROUP_EVENT: onGroupEvent(f); break;
    case Op.SYNC_GAP: onSyncGap(f); break;
    case Op.SYNC_DONE: onSyncDone(); break;
    case Op.ERROR: notice(f.message); break;
    default: break;
  }
  if (ITEM_OPCODES.has(frame.opcode)) scheduleAck();
  render();
}

function scheduleAck() {
  if (state.ackTimer) return;
  state.ackTimer = setTimeout(() => {
    state.ackTimer = null;
    const upTo = state.ackable;
    if (upTo <= state.acked || !state.conn || !state.online) return;
    state.conn.request(Op.ACK, { up_to_message_id: upTo })
      .then(() => { state.acked = maxId(state.acked, upTo); })
      .catch(() => {});
  }, ACK_DELAY_MS);
}

function onDeliver(f) {
  const direct = f.kind === Kind.DIRECT;
  const mine = lower(f.from) === lower(state.me);
  const key = direct ? directKey(mine ? f.to : f.from) : groupKey(f.group_id);
  const conv = conversation(key);
  if (direct) conv.title = mine ? f.to : f.from;
  else if (!state.groups.has(String(f.group_id))) refreshGroups();
  addMessage(conv, {
    id: f.message_id, from: f.from, body: f.body, timestamp: f.timestamp_ms, mine,
    state: mine ? 'sent' : null,
  });
  if (!mine) countUnread(conv, f.message_id);
  markReadIfViewed(conv);
}

function addMessage(conv, message) {
  const id = String(message.id);
  if (message.mine && conv.peer && message.id <= peerReadUpTo(conv.peer)) message.state = 'read';
  if (!conv.messages.has(id)) conv.messages.set(id, message);
  conv.lastActivity = maxId(conv.lastActivity, message.id);
}

function countUnread(conv, id) {
  const view = viewOf(conv.key);
  if (id <= BigInt(view.countedUpTo) || id <= BigInt(view.readUpTo)) return;
  view.countedUpTo = String(id);
  view.unread += 1;
  saveView();
}

function onFriendEvent(f) {
  const name = f.username;
  const key = lower(name);
  switch (f.event) {
    case Friend.ASKED:
      state.incoming.set(key, name);
      if (state.synced) notice(`${name} wants to be your friend.`);
      break;
    case Friend.YOU_ASKED:
      state.outgoing.set(key, name);
      break;
    case Friend.ACCEPTED:
    case Friend.YOU_ACCEPTED:
      state.incoming.delete(key);
      state.outgoing.delete(key);
      if (!state.friends.has(key)) state.friends.set(key, { name, online: false });
      conversation(directKey(name)).title = name;
      if (state.synced && f.event === Friend.ACCEPTED) notice(`${name} is now your friend.`);
      break;
    case Friend.DECLINED:
      state.outgoing.delete(key);
      if (state.synced) notice(`${name} declined your friend request.`);
      break;
    case Friend.YOU_DECLINED:
      state.incoming.delete(key);
      break;
    case Friend.REMOVED:
    case Friend.YOU_REMOVED:
      state.friends.delete(key);
      break;
    default: break;
  }
}

function onPresence(f) {
  const friend = state.friends.get(lower(f.username));
  if (friend) friend.online = f.online === 1;
}

function onReadReceipt(f) {
  if (lower(f.reader) === lower(state.me)) {
    // I read the conversation with `peer` on another device.
    const view = viewOf(directKey(f.peer));
    if (f.up_to_message_id > BigInt(view.readUpTo)) view.readUpTo = String(f.up_to_message_id);
    if (f.up_to_message_id >= BigInt(view.countedUpTo)) view.unread = 0;
    saveView();
    return;
  }
  // The peer read my messages up to that id.
  const peer = lower(f.reader);
  if (f.up_to_message_id > peerReadUpTo(peer)) {
    state.view.peerRead[peer] = String(f.up_to_message_id);
    saveView();
  }
  const conv = state.convs.get(directKey(peer));
  if (!conv) return;
  for (const message of conv.messages.values()) {
    if (message.mine && message.id <= f.up_to_message_id) message.state = 'read';
  }
}

function onGroupEvent(f) {
  const conv = conversation(groupKey(f.group_id));
  conv.title = f.group_name;
  const me = lower(f.username) === lower(state.me);
  conv.events.push({
    id: f.message_id,
    text: `${me ? 'You' : f.username} ${f.event === GroupEvent.JOINED ? 'joined' : 'left'}`,
  });
  conv.lastActivity = maxId(conv.lastActivity, f.message_id);
  if (me && f.event === GroupEvent.LEFT) {
    state.groups.delete(String(f.group_id));
    if (state.current === conv.key) state.current = null;
  } else if (!state.groups.has(String(f.group_id)) || state.synced) {
    refreshGroups();
  }
}

async function onSyncDone() {
  state.synced = true;
  const conn = state.conn;
  try {
    await Promise.all([refreshFriends(), refreshGroups()]);
    if (state.view.gap && state.conn === conn) await fillGap(state.view.gap);
    if (state.current) {
      const conv = conversation(state.current);
      if (!conv.historyLoaded) await loadHistory(conv);
      markReadIfViewed(conv);
    }
  } catch (error) {
    if (!(error instanceof Closed)) notice(explain(error));
  }
  render();
}

async function refreshFriends() {
  const list = await state.conn.request(Op.FRIEND_LIST);
  state.friends.clear();
  for (const f of list.friends) {
    state.friends.set(lower(f.username), { name: f.username, online: f.online === 1 });
    conversation(directKey(f.username)).title = f.username;
  }
  state.incoming = new Map(list.incoming.map((r) => [lower(r.username), r.username]));
  state.outgoing = new Map(list.outgoing.map((r) => [lower(r.username), r.username]));
  render();
}

async function refreshGroups() {
  if (!state.conn || !state.online) return;
  try {
    const list = await state.conn.request(Op.GROUP_LIST);
    state.groups.clear();
    for (const g of list.groups) {
      state.groups.set(String(g.group_id), { id: g.group_id, name: g.name, owner: g.owner, members: g.members });
      conversation(groupKey(g.group_id)).title = g.name;
    }
    render();
  } catch (error) {
    if (!(error instanceof Closed)) notice(explain(error));
  }
}

/**
 * A long absence: the items in (after, up_to] are not pushed. The gap is kept (in the view,
 * so a reload in the middle resumes it) until each conversation has been read forward from
 * its history, because acknowledging the items that follow moves this device past it. What
 * each conversation had counted as unread before is kept with it, so nothing counts twice.
 */
function onSyncGap(f) {
  const counted = {};
  for (const [key, view] of Object.entries(state.view.convs)) counted[key] = view.countedUpTo;
  const kept = state.view.gap;
  state.view.gap = {
    after: String(kept ? BigInt(kept.after) : f.after_message_id),
    upTo: String(f.up_to_message_id),
    counted: kept ? kept.counted : counted,
  };
  saveView();
}

/** Reads each conversation forward through the gap, counting what others wrote as unread. */
async function fillGap(gap) {
  const after = BigInt(gap.after);
  const upTo = BigInt(gap.upTo);
  let found = 0;
  // Friends and groups now, and the direct conversations this browser has seen (former
  // friends, whose history stays readable); one that is no longer readable is skipped.
  const targets = new Set([...state.friends.values()].map((f) => directKey(f.name))
    .concat([...state.groups.keys()].map((id) => groupKey(id)))
    .concat(Object.keys(state.view.convs).filter((key) => key.startsWith('u:'))));
  for (const key of targets) {
    const conv = conversation(key);
    const view = viewOf(key);
    const countedBefore = BigInt(gap.counted[key] || '0');
    let from = after;
    while (from !== 0n && from < upTo) {
      let page;
      try {
        page = await state.conn.request(Op.HISTORY, {
          ...target(conv), direction: Direction.NEWER, from_message_id: from, limit: GAP_PAGE,
        });
      } catch (error) {
        if (error instanceof ServerError && error.code === Err.FORBIDDEN) break;
        throw error;
      }
      for (const m of page.messages) {
        if (m.message_id > upTo) break;
        const mine = lower(m.sender) === lower(state.me);
        addMessage(conv, { id: m.message_id, from: m.sender, body: m.body, timestamp: m.timestamp_ms, mine, state: mine ? 'sent' : null });
        if (!mine && m.message_id > countedBefore && m.message_id > BigInt(view.readUpTo)) {
          view.unread += 1;
          found += 1;
        }
      }
      from = page.next;
    }
  }
  state.view.gap = null;
  saveView();
  // Messages this page had already shown (or counted) are not news: say so only when some are.
  notice(found === 0 ? 'You were away a long time: your conversations were brought up to date from history.'
    : `You were away a long time: ${found} more message${found === 1 ? ' was' : 's were'} read from history.`);
}

// ---------------------------------------------------------------------------------------------
// Requests from the page
// ---------------------------------------------------------------------------------------------

function target(conv) {
  return conv.group ? { kind: Kind.GROUP, group_id: conv.groupId } : { kind: Kind.DIRECT, peer: conv.peer };
}

async function loadHistory(conv) {
  if (conv.loading || !state.conn || !state.online) return;
  if (conv.historyLoaded && conv.historyNext === 0n) return;
  conv.loading = true;
  try {
    const page = await state.conn.request(Op.HISTORY, {
      ...target(conv), direction: Direction.OLDER, from_message_id: conv.historyNext, limit: HISTORY_PAGE,
    });
    for (const m of page.messages) {
      const mine = lower(m.sender) === lower(state.me);
      addMessage(conv, { id: m.message_id, from: m.sender, body: m.body, timestamp: m.timestamp_ms, mine, state: mine ? 'sent' : null });
    }
    conv.historyLoaded = true;
    conv.historyNext = page.next;
  } catch (error) {
    if (!(error instanceof Closed)) notice(explain(error));
  } finally {
    conv.loading = false;
  }
  renderConversation({ keepBottomDistance: true });
}

/** Sends READ when the open conversation shows messages newer than my read position. */
function markReadIfViewed(conv) {
  if (state.current !== conv.key || document.visibilityState !== 'visible') return;
  const view = viewOf(conv.key);
  let newest = 0n;
  for (const message of conv.messages.values()) if (!message.mine) newest = maxId(newest, message.id);
  if (view.unread !== 0) { view.unread = 0; saveView(); }
  if (newest <= BigInt(view.readUpTo)) return;
  view.readUpTo = String(newest);
  view.countedUpTo = String(maxId(newest, BigInt(view.countedUpTo)));
  saveView();
  if (!conv.group && state.conn && state.online) {
    state.conn.request(Op.READ, { peer: conv.peer, up_to_message_id: newest }).catch(() => {});
  }
}

function sendMessage(conv, body) {
  state.nextClientMsgId = (state.nextClientMsgId + 1n) & ((1n << 64n) - 1n);
  const message = {
    id: null, clientMsgId: state.nextClientMsgId, from: state.me, body, key: conv.key,
    state: 'sending', mine: true, timestamp: null, sentOn: null,
  };
  conv.pending.push(message);
  state.outbox.push(message);
  saveOutbox();
  transmit(message);
  renderConversation({ toBottom: true });
  renderList();
}

/**
 * Sends one unsent message on the current connection, once per connection; a retry on a new
 * connection carries the same client_msg_id, so the server stores it once.
 */
async function transmit(message) {
  const conn = state.conn;
  if (!conn || !state.online || message.sentOn === conn) return;
  message.sentOn = conn;
  const conv = conversation(message.key);
  const request = conv.group
    ? conn.request(Op.GROUP_SEND, { group_id: conv.groupId, client_msg_id: message.clientMsgId, body: message.body })
    : conn.request(Op.SEND, { to: conv.peer, client_msg_id: message.clientMsgId, body: message.body });
  try {
    const sent = await request;
    message.id = sent.message_id;
    message.timestamp = sent.timestamp_ms;
    message.state = 'sent';
    conv.pending = conv.pending.filter((m) => m !== message);
    addMessage(conv, message);
    state.outbox = state.outbox.filter((m) => m !== message);
    saveOutbox();
    if (state.conn === conn) {
      state.ackable = maxId(state.ackable, sent.message_id);
      scheduleAck();
    }
  } catch (error) {
    if (error instanceof Closed) { message.sentOn = null; return; } // resent after reconnecting
    if (error instanceof ServerError && (error.retryAfterMs !== null || error.code === Err.STORE_UNAVAILABLE)) {
      message.sentOn = null;
      setTimeout(() => transmit(message), error.retryAfterMs || 2000);
      return;
    }
    message.state = 'failed';
    message.error = explain(error);
    state.outbox = state.outbox.filter((m) => m !== message);
    saveOutbox();
  }
  renderConversation({});
  renderList();
}

async function act(promise, success) {
  try {
    const answer = await promise;
    if (success) notice(typeof success === 'function' ? success(answer) : success);
    return answer;
  } catch (error) {
    notice(explain(error));
    return null;
  } finally {
    render();
  }
}

async function addFriend(name) {
  if (!state.conn || !state.online) { notice('Not connected.'); return; }
  const answer = await act(state.conn.request(Op.FRIEND_REQUEST, { username: name }),
    (a) => (a.outcome === 1 ? `You and ${name} are now friends.` : `Friend request sent to ${name}.`));
  if (answer) await refreshFriends();
}

async function answerRequest(name, accept) {
  if (!state.conn || !state.online) { notice('Not connected.'); return; }
  const answer = await act(state.conn.request(accept ? Op.FRIEND_ACCEPT : Op.FRIEND_DECLINE, { username: name }));
  if (answer) await refreshFriends();
}

async function createGroup(name) {
  if (!state.conn || !state.online) { notice('Not connected.'); return; }
  const answer = await act(state.conn.request(Op.GROUP_CREATE, { name }));
  if (!answer) return;
  await refreshGroups();
  openConversation(groupKey(answer.group_id));
}

async function invite(conv, name) {
  if (!state.conn || !state.online) { notice('Not connected.'); return; }
  const answer = await act(state.conn.request(Op.GROUP_INVITE, { group_id: conv.groupId, username: name }),
    `${name} joined ${conv.title}.`);
  if (answer) {
    conv.events.push({ id: conv.lastActivity, text: `you invited ${name}` });
    await refreshGroups();
  }
}

async function removeFriend(conv) {
  if (!state.conn || !state.online) { notice('Not connected.'); return; }
  const friend = state.friends.get(conv.peer);
  if (!friend) return;
  const answer = await act(state.conn.request(Op.FRIEND_REMOVE, { username: friend.name }),
    `You and ${friend.name} are no longer friends.`);
  if (!answer) return;
  state.friends.delete(conv.peer);
  if (state.current === conv.key) closeConversation();
  else render();
}

async function showAccount() {
  if (!state.conn || !state.online) { notice('Not connected.'); return; }
  const answer = await act(state.conn.request(Op.DEVICE_LIST));
  if (!answer) return;
  renderDevices(answer.devices);
  $('#account').hidden = false;
}

/**
 * A fresh proof of `password` for changing the password or deleting the account
 * (PROTOCOL.md §5, "Your account"): the same SCRAM exchange as at login, on this connection.
 */
async function freshProof(password) {
  const clientNonce = scram.randomBytes(24);
  const { salt, iterations, nonce } = await state.conn.request(Op.REAUTH_START, { client_nonce: clientNonce });
  if (!scram.sameBytes(nonce.subarray(0, clientNonce.length), clientNonce)) {
    throw new Error('The server answered another challenge.');
  }
  const keys = await scram.deriveKeys(password, salt, iterations);
  return scram.clientProof(keys, scram.authMessage(state.me, clientNonce, salt, iterations, nonce));
}

async function changePassword(current, next) {
  if (!state.conn || !state.online) { notice('Not connected.'); return false; }
  notice('Checking your password…');
  const changed = await act((async () => {
    const clientProof = await freshProof(current);
    const salt = scram.randomBytes(16);
    const iterations = scram.registrationIterations(state.hello.min_kdf_iterations);
    const keys = await scram.deriveKeys(next, salt, iterations);
    await state.conn.request(Op.PASSWORD_CHANGE, {
      client_proof: clientProof, salt, iterations, stored_key: keys.storedKey, server_key: keys.serverKey,
    });
    return keys;
  })(), 'Password changed; your other devices were logged out.');
  if (!changed) return false;
  // This connection stays logged in; a reconnect or reload logs in with the new keys.
  state.keys = changed;
  if (state.remember) storage.set(SESSION_KEY, keysToStorage(state.me, changed));
  return true;
}

async function deleteAccount(name, password) {
  if (!state.conn || !state.online) { notice('Not connected.'); return; }
  if (lower(name) !== lower(state.me)) { notice(`Type your username, ${state.me}, to delete the account.`); return; }
  notice('Checking your password…');
  const deleted = await act((async () => {
    await state.conn.request(Op.ACCOUNT_DELETE, { client_proof: await freshProof(password) });
    return true;
  })());
  if (deleted) forgetSession('Your account was deleted.');
}

async function removeDevice(device, button) {
  if (!state.conn || !state.online) { notice('Not connected.'); return; }
  confirmTwice(button, String(device.device_id), 'Remove? Click again', async () => {
    const answer = await act(state.conn.request(Op.DEVICE_REMOVE, { device_id: device.device_id }),
      `${device.name} was removed and logged out.`);
    if (answer) await showAccount();
  });
}

/**
 * A button that destroys something asks for a second click within a few seconds instead of
 * a blocking dialog: the first click turns its label into `question`.
 */
function confirmTwice(button, key, question, then) {
  if (button.dataset.armed !== key) {
    const label = button.dataset.label || button.textContent;
    button.dataset.armed = key;
    button.dataset.label = label;
    button.textContent = question;
    setTimeout(() => {
      if (button.dataset.armed !== key) return;
      delete button.dataset.armed;
      button.textContent = label;
    }, 4000);
    return;
  }
  delete button.dataset.armed;
  button.textContent = button.dataset.label;
  then();
}

async function leaveGroup(conv) {
  if (!state.conn || !state.online) { notice('Not connected.'); return; }
  const answer = await act(state.conn.request(Op.GROUP_LEAVE, { group_id: conv.groupId }),
    `You left ${conv.title}.`);
  if (!answer) return;
  state.groups.delete(String(conv.groupId));
  if (state.current === conv.key) closeConversation();
  else render();
}

/** Back to the list: no conversation shown (on a phone-sized screen, the list again). */
function closeConversation() {
  document.body.classList.remove('show-conversation');
  state.current = null;
  render();
}

/**
 * Shows a conversation. On a phone-sized screen it replaces the list, and a history entry is
 * pushed so that the phone's own back gesture returns to the list instead of leaving the page.
 */
function openConversation(key) {
  state.current = key;
  const conv = conversation(key);
  if (PHONE_WIDTH.matches && !document.body.classList.contains('show-conversation')) {
    history.pushState({ conversation: true }, '');
  }
  document.body.classList.add('show-conversation');
  render();
  renderConversation({ toBottom: true });
  if (!conv.historyLoaded) loadHistory(conv).then(() => { markReadIfViewed(conv); render(); });
  markReadIfViewed(conv);
  $('[data-test=composer]').focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------

function wire() {
  $('#login-form').addEventListener('submit', (event) => { event.preventDefault(); submitLogin(false); });
  $('[data-test=register]').addEventListener('click', () => submitLogin(true));
  $('[data-test=logout]').addEventListener('click', logout);
  $('#friend-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('[data-test=friend-name]');
    const name = input.value.trim();
    if (name) { input.value = ''; addFriend(name); }
  });
  $('#group-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('[data-test=group-name]');
    const name = input.value.trim();
    if (name) { input.value = ''; createGroup(name); }
  });
  const leave = $('[data-test=group-leave]');
  leave.addEventListener('click', () => {
    const conv = state.current && state.convs.get(state.current);
    if (conv && conv.group) confirmTwice(leave, conv.key, 'Leave? Click again', () => leaveGroup(conv));
  });
  const unfriend = $('[data-test=friend-remove]');
  unfriend.addEventListener('click', () => {
    const conv = state.current && state.convs.get(state.current);
    if (conv && !conv.group) confirmTwice(unfriend, conv.key, 'Remove? Click again', () => removeFriend(conv));
  });
  $('[data-test=account]').addEventListener('click', showAccount);
  $('[data-test=account-close]').addEventListener('click', () => { $('#account').hidden = true; });
  $('#password-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const current = $('[data-test=password-current]');
    const next = $('[data-test=password-new]');
    if (!current.value || !next.value) return;
    if (await changePassword(current.value, next.value)) {
      current.value = '';
      next.value = '';
    }
  });
  $('#delete-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('[data-test=delete-name]').value.trim();
    const password = $('[data-test=delete-password]');
    const button = $('[data-test=delete-account]');
    confirmTwice(button, 'delete', 'Delete for good? Click again', () => {
      const typed = password.value;
      password.value = '';
      deleteAccount(name, typed);
    });
  });
  $('#invite-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('[data-test=invite-name]').value;
    const conv = state.current && state.convs.get(state.current);
    if (name && conv && conv.group) invite(conv, name);
  });
  const composer = $('[data-test=composer]');
  const submit = () => {
    const conv = state.current && state.convs.get(state.current);
    const body = composer.value.trim();
    if (!conv || !body) return;
    const limit = state.hello ? state.hello.max_body : 4096;
    if (new TextEncoder().encode(body).length > limit) { notice(`A message holds at most ${limit} bytes.`); return; }
    composer.value = '';
    sendMessage(conv, body);
  };
  $('#composer-form').addEventListener('submit', (event) => { event.preventDefault(); submit(); });
  composer.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) { event.preventDefault(); submit(); }
  });
  $('[data-test=back]').addEventListener('click', () => {
    if (history.state && history.state.conversation) history.back(); // popstate closes it
    else closeConversation();
  });
  window.addEventListener('popstate', () => {
    if (document.body.classList.contains('show-conversation')) closeConversation();
  });
  const scroller = $('[data-test=messages]');
  const older = () => { const conv = state.current && state.convs.get(state.current); if (conv) loadHistory(conv); };
  $('[data-test=history-more]').addEventListener('click', older);
  scroller.addEventListener('scroll', () => { if (scroller.scrollTop < 60) older(); });
  document.addEventListener('visibilitychange', () => {
    const conv = state.current && state.convs.get(state.current);
    if (conv) { markReadIfViewed(conv); render(); }
  });
  window.addEventListener('online', () => { if (state.keys && !state.conn) resume(); });
  // Leaving the page ends its connection at once, so friends see the user go offline even
  // when the browser keeps the page in its back-forward cache; coming back reconnects.
  window.addEventListener('pagehide', () => {
    const conn = state.conn;
    state.conn = null;
    state.online = false;
    stopPing();
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (conn) conn.close();
  });
  window.addEventListener('pageshow', (event) => {
    if (event.persisted && state.keys && !state.conn) resume();
  });
}

async function start() {
  actions.openConversation = openConversation;
  actions.answerRequest = answerRequest;
  actions.removeDevice = removeDevice;
  wire();
  const kept = storage.get(SESSION_KEY);
  if (kept && kept.username && scram.available()) {
    try {
      state.keys = await keysFromStorage(kept);
    } catch {
      storage.remove(SESSION_KEY);
      showLogin();
      return;
    }
    resetUserState(kept.username, true);
    state.me = kept.username;
    showChat();
    render();
    resume();
    return;
  }
  showLogin();
}

start();

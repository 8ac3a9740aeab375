// The page's state and what of it the browser keeps: this browser's device, the derived
// keys (only with "remember me"), and per user the read positions, unread counts and a
// pending SYNC_GAP (the view), and the unsent messages when remembered. Nothing kept is the
// password. app.js changes the state; view.js draws it.

import * as scram from './scram.js';

const $ = (selector) => document.querySelector(selector);
export const lower = (name) => name.toLowerCase();
export const directKey = (name) => `u:${lower(name)}`;
export const groupKey = (id) => `g:${id}`;
export const maxId = (a, b) => (a > b ? a : b);

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

export const storage = {
  get(key) {
    try { return JSON.parse(localStorage.getItem(key)); } catch { return null; }
  },
  set(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); } catch { /* full or disabled */ }
  },
  remove(key) {
    try { localStorage.removeItem(key); } catch { /* disabled */ }
  },
};

export const SESSION_KEY = 'im.session';
const DEVICE_KEY = 'im.device';
export const viewKey = (user) => `im.view.${lower(user)}`;
export const outboxKey = (user) => `im.outbox.${lower(user)}`;

/** "Chrome on Linux": the browser and the system, from the user agent. */
function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? 'Edge' : /Firefox\//.test(ua) ? 'Firefox'
    : /Chrom(e|ium)\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Browser';
  const system = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS'
    : /Windows/.test(ua) ? 'Windows' : /Mac OS X/.test(ua) ? 'macOS'
      : /CrOS/.test(ua) ? 'ChromeOS' : /Linux/.test(ua) ? 'Linux' : 'the web';
  return `${browser} on ${system}`;
}

/** This browser's device: a random nonzero u64 drawn once and kept. */
function thisDevice() {
  const kept = storage.get(DEVICE_KEY);
  if (kept && /^[1-9][0-9]*$/.test(kept.id)) return { id: BigInt(kept.id), name: kept.name };
  let id = 0n;
  while (id === 0n) id = new DataView(scram.randomBytes(8).buffer).getBigUint64(0);
  const device = { id, name: deviceName() };
  storage.set(DEVICE_KEY, { id: String(id), name: device.name });
  return device;
}

export function keysToStorage(username, keys) {
  return {
    username, salt: scram.toBase64(keys.salt), iterations: keys.iterations,
    clientKey: scram.toBase64(keys.clientKey), serverKey: scram.toBase64(keys.serverKey),
  };
}

export async function keysFromStorage(kept) {
  return scram.keysFromParts(scram.fromBase64(kept.salt), kept.iterations,
    scram.fromBase64(kept.clientKey), scram.fromBase64(kept.serverKey));
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

export const state = {
  device: thisDevice(),
  conn: null,
  me: null, // the username as registered, once logged in
  keys: null, // derived keys of this login, kept in memory to reconnect
  remember: false,
  online: false, // logged in on the current connection
  synced: false, // SYNC_DONE seen on the current connection
  hello: null,
  friends: new Map(), // lower name -> {name, online}
  incoming: new Map(), // lower name -> name
  outgoing: new Map(),
  groups: new Map(), // id string -> {id, name, owner, members}
  convs: new Map(), // key -> conversation
  current: null, // key of the open conversation
  outbox: [], // my messages not yet SENT, oldest first
  view: { convs: {}, peerRead: {}, gap: null }, // persisted per user: read positions, unread, a gap
  lastItem: 0n, // highest item id processed on this connection
  ackable: 0n, // highest id this connection may acknowledge (items and own SENT)
  acked: 0n,
  ackTimer: null,
  pingTimer: null,
  reconnectTimer: null,
  reconnectAttempt: 0,
  generation: 0, // bumped when the session ends, so a login still under way is dropped
  nextClientMsgId: new DataView(scram.randomBytes(8).buffer).getBigUint64(0) >> 1n,
};

export function conversation(key) {
  let conv = state.convs.get(key);
  if (!conv) {
    const group = key.startsWith('g:');
    conv = {
      key, group, peer: group ? null : key.slice(2), groupId: group ? BigInt(key.slice(2)) : null,
      title: key.slice(2), messages: new Map(), pending: [], events: [],
      historyLoaded: false, historyNext: 0n, loading: false, lastActivity: 0n,
    };
    state.convs.set(key, conv);
  }
  return conv;
}

export function viewOf(key) {
  const all = state.view.convs;
  if (!all[key]) all[key] = { readUpTo: '0', countedUpTo: '0', unread: 0 };
  return all[key];
}

export function saveView() {
  if (state.me) storage.set(viewKey(state.me), state.view);
}

export function loadView(user) {
  const kept = storage.get(viewKey(user));
  state.view = kept && kept.convs && kept.peerRead ? kept : { convs: {}, peerRead: {}, gap: null };
}

export function saveOutbox() {
  if (!state.me) return;
  if (!state.remember) { storage.remove(outboxKey(state.me)); return; }
  storage.set(outboxKey(state.me), state.outbox.map((m) => ({
    key: m.key, clientMsgId: String(m.clientMsgId), body: m.body,
  })));
}

export function loadOutbox(user) {
  const kept = storage.get(outboxKey(user)) || [];
  state.outbox = [];
  for (const entry of kept) {
    const message = {
      id: null, clientMsgId: BigInt(entry.clientMsgId), from: user, body: entry.body,
      key: entry.key, state: 'sending', mine: true, timestamp: null, sentOn: null,
    };
    state.outbox.push(message);
    conversation(entry.key).pending.push(message);
  }
}

export function peerReadUpTo(peer) {
  return BigInt(state.view.peerRead[lower(peer)] || '0');
}

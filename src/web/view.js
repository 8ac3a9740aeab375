// The page's DOM: draws the state of state.js into index.html's elements. Buttons call back
// into app.js through `actions`, which app.js fills in at start. User text is only ever set
// as textContent, never parsed as HTML.

import { conversation, directKey, groupKey, lower, state, viewOf } from './state.js';

const NOTICE_MS = 6000;

/**
 * What the list's buttons do, set by app.js: `openConversation(key)`, `answerRequest(name,
 * accept)`, `removeDevice(device, button)`.
 */
export const actions = {};

export const $ = (selector) => document.querySelector(selector);

// ---------------------------------------------------------------------------------------------
// The DOM
// ---------------------------------------------------------------------------------------------

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'onclick') node.addEventListener('click', value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

let noticeTimer = null;
export function notice(text) {
  const box = $('[data-test=notice]');
  box.textContent = text;
  box.hidden = !text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.hidden = true; }, NOTICE_MS);
}

export function setLoginStatus(text) {
  $('[data-test=login-status]').textContent = text;
}

export function setLoginBusy(busy) {
  for (const name of ['login', 'register']) $(`[data-test=${name}]`).disabled = busy;
}

export function setConnection(which, text) {
  const badge = $('[data-test=connection]');
  badge.dataset.state = which;
  badge.textContent = text || { online: 'Online', connecting: 'Connecting…', offline: 'Offline' }[which];
}

export function showLogin() {
  $('#login').hidden = false;
  $('#chat').hidden = true;
  document.body.classList.remove('show-conversation');
  $('[data-test=username]').focus();
}

export function showChat() {
  $('#login').hidden = true;
  $('#chat').hidden = false;
  $('[data-test=me]').textContent = state.me;
}

export function render() {
  if (!state.me) return;
  renderRequests();
  renderList();
  renderConversationHeader();
  renderConversation({});
}

function renderRequests() {
  const box = $('#requests');
  const rows = [];
  for (const name of [...state.incoming.values()].sort(byName)) {
    rows.push(el('li', { class: 'request', 'data-test': `request-in-${name}` },
      el('span', { class: 'request-text' }, el('strong', {}, name), ' wants to be your friend'),
      el('span', { class: 'request-actions' },
        el('button', { type: 'button', class: 'primary small', 'data-test': `request-accept-${name}`, onclick: () => actions.answerRequest(name, true) }, 'Accept'),
        el('button', { type: 'button', class: 'small', 'data-test': `request-decline-${name}`, onclick: () => actions.answerRequest(name, false) }, 'Decline'))));
  }
  for (const name of [...state.outgoing.values()].sort(byName)) {
    rows.push(el('li', { class: 'request outgoing', 'data-test': `request-out-${name}` },
      el('span', { class: 'request-text' }, 'Waiting for ', el('strong', {}, name))));
  }
  box.replaceChildren(...rows);
  box.hidden = rows.length === 0;
}

function memberCount(count) {
  return `${count} member${count === 1 ? '' : 's'}`;
}

function byName(a, b) {
  return lower(a) < lower(b) ? -1 : lower(a) > lower(b) ? 1 : 0;
}

function lastMessage(conv) {
  let last = null;
  for (const message of conv.messages.values()) if (!last || message.id > last.id) last = message;
  if (conv.pending.length) last = conv.pending[conv.pending.length - 1];
  return last;
}

export function renderList() {
  const rows = [];
  const entries = [];
  for (const friend of state.friends.values()) entries.push({ conv: conversation(directKey(friend.name)), friend });
  for (const group of state.groups.values()) entries.push({ conv: conversation(groupKey(group.id)), group });
  entries.sort((a, b) => (a.conv.lastActivity === b.conv.lastActivity
    ? byName(a.conv.title, b.conv.title) : (a.conv.lastActivity > b.conv.lastActivity ? -1 : 1)));
  for (const { conv, friend, group } of entries) {
    const unread = viewOf(conv.key).unread;
    const last = lastMessage(conv);
    const preview = last ? `${last.mine ? 'You: ' : conv.group ? `${last.from}: ` : ''}${last.body}` : (group ? memberCount(group.members) : '');
    const name = friend ? friend.name : group.name;
    const testName = friend ? friend.name : `group-${group.id}`;
    rows.push(el('li', {},
      el('button', {
        type: 'button',
        class: `conv${state.current === conv.key ? ' current' : ''}${friend && friend.online ? ' online' : ''}`,
        'data-test': `conversation-${testName}`,
        'data-online': friend ? (friend.online ? '1' : '0') : null,
        'data-name': group ? group.name : null,
        onclick: () => actions.openConversation(conv.key),
      },
      el('span', { class: `avatar${group ? ' group' : ''}`, 'aria-hidden': 'true' }, name.slice(0, 1).toUpperCase()),
      el('span', { class: 'conv-text' },
        el('span', { class: 'conv-name' }, name,
          friend ? el('span', { class: 'presence', title: friend.online ? 'online' : 'offline' }) : null),
        el('span', { class: 'conv-preview' }, preview)),
      el('span', { class: 'badge', 'data-test': `unread-${testName}`, hidden: unread === 0 }, unread))));
  }
  const list = $('[data-test=conversations]');
  list.replaceChildren(...rows);
  $('#no-conversations').hidden = rows.length > 0;
  const connection = $('[data-test=connection]');
  if (state.online && connection.dataset.state !== 'online') setConnection('online');
  if (!state.online && !state.reconnectTimer && connection.dataset.state === 'online') setConnection('offline');
}

function renderConversationHeader() {
  const conv = state.current ? state.convs.get(state.current) : null;
  const pane = $('[data-test=conversation]');
  pane.classList.toggle('empty', !conv);
  if (!conv) return;
  $('[data-test=conversation-title]').textContent = conv.title;
  let status = '';
  if (conv.group) {
    const group = state.groups.get(String(conv.groupId));
    status = group ? memberCount(group.members) : '';
  } else {
    const friend = state.friends.get(conv.peer);
    status = friend ? (friend.online ? 'online' : 'offline') : 'not a friend';
  }
  $('[data-test=conversation-status]').textContent = status;
  const inviteForm = $('#invite-form');
  inviteForm.hidden = !conv.group || conv.groupId === 1n;
  $('[data-test=group-leave]').hidden = inviteForm.hidden;
  $('[data-test=friend-remove]').hidden = conv.group || !state.friends.has(conv.peer);
  if (!inviteForm.hidden) {
    // Rebuilt only when the friends change, so an open drop-down is left alone.
    const select = $('[data-test=invite-name]');
    const names = [...state.friends.values()].map((f) => f.name).sort(byName);
    if (select.dataset.names !== names.join(' ')) {
      const chosen = select.value;
      select.dataset.names = names.join(' ');
      select.replaceChildren(el('option', { value: '' }, 'Invite a friend…'),
        ...names.map((name) => el('option', { value: name, selected: name === chosen }, name)));
    }
  }
}

/** The devices of `DEVICE_LIST_RESULT`, most recently seen first; this one cannot be removed. */
export function renderDevices(devices) {
  const rows = devices.map((device) => {
    const id = String(device.device_id);
    const seen = device.current === 1 ? 'this device'
      : device.online === 1 ? 'online now' : `last seen ${formatTime(device.last_seen_ms)}`;
    return el('li', { class: 'device', 'data-test': `device-${id}`, 'data-name': device.name },
      el('span', { class: 'device-text' },
        el('span', { class: 'device-name' }, device.name),
        el('span', { class: 'device-seen', 'data-test': `device-seen-${id}` }, seen)),
      device.current === 1 ? null : el('button', {
        type: 'button', class: 'small', 'data-test': `device-remove-${id}`,
        onclick: (event) => actions.removeDevice(device, event.currentTarget),
      }, 'Remove'));
  });
  $('[data-test=device-list]').replaceChildren(...rows);
}

function formatTime(timestamp) {
  if (timestamp === null || timestamp === undefined) return '';
  const date = new Date(Number(timestamp));
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

const STATE_MARKS = { sending: '○', sent: '✓', read: '✓✓', failed: '!' };
const STATE_LABELS = { sending: 'sending', sent: 'sent', read: 'read', failed: 'not sent' };

export function renderConversation({ toBottom = false, keepBottomDistance = false }) {
  const conv = state.current ? state.convs.get(state.current) : null;
  const scroller = $('[data-test=messages]');
  if (!conv) { $('#message-list').replaceChildren(); return; }
  const distance = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  const atBottom = distance < 40;
  const items = [...conv.messages.values()].map((m) => ({ id: m.id, message: m }))
    .concat(conv.events.map((e) => ({ id: e.id, event: e })));
  items.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const m of conv.pending) items.push({ message: m });
  const rows = items.map(({ message, event }) => {
    if (event) return el('li', { class: 'event', 'data-test': 'event' }, event.text);
    const m = message;
    const mark = m.mine ? el('span', { class: `mark ${m.state}`, title: STATE_LABELS[m.state] }, STATE_MARKS[m.state]) : null;
    return el('li', {
      class: `message ${m.mine ? 'mine' : 'theirs'}`,
      'data-test': 'message',
      'data-id': m.id === null ? null : String(m.id),
      'data-from': m.from,
      'data-mine': m.mine ? '1' : '0',
      'data-state': m.mine ? m.state : null,
    },
    conv.group && !m.mine ? el('span', { class: 'sender' }, m.from) : null,
    el('span', { class: 'body' }, m.body),
    el('span', { class: 'meta' }, formatTime(m.timestamp), mark),
    m.error ? el('span', { class: 'error' }, m.error) : null);
  });
  $('#message-list').replaceChildren(...rows);
  const more = $('[data-test=history-more]');
  more.hidden = conv.historyLoaded && conv.historyNext === 0n;
  more.disabled = conv.loading;
  if (toBottom || (atBottom && !keepBottomDistance)) scroller.scrollTop = scroller.scrollHeight;
  else if (keepBottomDistance) scroller.scrollTop = scroller.scrollHeight - scroller.clientHeight - distance;
}

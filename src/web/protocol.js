// The wire format of PROTOCOL.md, for the browser: opcodes, error codes, and one table of
// every frame's fields from which both encoding and decoding are done. No IO here: app.js
// owns the WebSocket and hands whole frames (one per WebSocket message) to decodeFrame.
//
// Integers are big-endian; u64 values are BigInt everywhere (message ids, device ids,
// client_msg_ids, timestamps), so no id ever loses precision in a Number.

export const VERSION = 2;
export const LOBBY_GROUP_ID = 1n;

export const Op = {
  // Requests.
  HELLO: 0x01, PING: 0x02, REGISTER: 0x03, LOGIN_START: 0x04, LOGIN_FINISH: 0x05, LOGOUT: 0x06,
  REAUTH_START: 0x07, PASSWORD_CHANGE: 0x08, ACCOUNT_DELETE: 0x09,
  FRIEND_REQUEST: 0x10, FRIEND_ACCEPT: 0x11, FRIEND_DECLINE: 0x12, FRIEND_REMOVE: 0x13,
  FRIEND_LIST: 0x14,
  SEND: 0x20, ACK: 0x21, HISTORY: 0x22, READ: 0x23,
  GROUP_CREATE: 0x30, GROUP_INVITE: 0x31, GROUP_LEAVE: 0x32, GROUP_MEMBERS: 0x33,
  GROUP_LIST: 0x34, GROUP_SEND: 0x35,
  DEVICE_LIST: 0x40, DEVICE_REMOVE: 0x41,
  // Responses.
  OK: 0x80, HELLO_OK: 0x81, PONG: 0x82, ERROR: 0x83, LOGIN_CHALLENGE: 0x84, LOGIN_OK: 0x85,
  FRIEND_REQUEST_OK: 0x86, FRIEND_LIST_RESULT: 0x87, SENT: 0x88, HISTORY_PAGE: 0x89,
  GROUP_CREATED: 0x8a, GROUP_MEMBERS_RESULT: 0x8b, GROUP_LIST_RESULT: 0x8c, RETRY_LATER: 0x8d,
  DEVICE_LIST_RESULT: 0x8e,
  // Pushes.
  DELIVER: 0xc0, FRIEND_EVENT: 0xc1, PRESENCE: 0xc2, READ_RECEIPT: 0xc3, SYNC_DONE: 0xc4,
  GROUP_EVENT: 0xc5, SYNC_GAP: 0xc6,
};

export const OP_NAMES = Object.fromEntries(Object.entries(Op).map(([name, value]) => [value, name]));

// Error codes of PROTOCOL.md section 4; app.js acts on the number, shows the sentence.
export const Err = {
  MALFORMED_FRAME: 1, UNKNOWN_OPCODE: 2, FRAME_TOO_LARGE: 3, UNSUPPORTED_VERSION: 4,
  HELLO_REQUIRED: 5, NOT_AUTHENTICATED: 6, INVALID_STATE: 7, SERVER_FULL: 8, IDLE_TIMEOUT: 9,
  INVALID_USERNAME: 10, USERNAME_TAKEN: 11, WEAK_CREDENTIALS: 12, AUTH_FAILED: 13,
  TOO_MANY_ATTEMPTS: 14, USER_NOT_FOUND: 15, ALREADY_FRIENDS: 16, REQUEST_PENDING: 17,
  NO_SUCH_REQUEST: 18, NOT_FRIENDS: 19, INVALID_BODY: 20, FORBIDDEN: 21, ALREADY_MEMBER: 22,
  INVALID_ARGUMENT: 23, STORE_UNAVAILABLE: 24, SHUTTING_DOWN: 25, SLOW_READER: 26,
  RATE_LIMITED: 27, RECIPIENT_QUEUE_FULL: 28, TOO_MANY_SESSIONS: 29, LOGIN_TIMEOUT: 30,
  TOO_MANY_DEVICES: 31, NO_SUCH_DEVICE: 32, FRAME_TIMEOUT: 33, TOO_MANY_GROUPS: 34,
  GROUP_FULL: 35, TOO_MANY_REQUESTS: 36, TOO_MANY_FRIENDS: 37, LOGIN_THROTTLED: 38,
  CREDENTIALS_CHANGED: 40, ACCOUNT_DELETED: 41,
};

// FRIEND_EVENT events: what another user did (1-4), what you did on another device (5-8).
export const Friend = {
  ASKED: 1, ACCEPTED: 2, DECLINED: 3, REMOVED: 4,
  YOU_ASKED: 5, YOU_ACCEPTED: 6, YOU_DECLINED: 7, YOU_REMOVED: 8,
};
export const GroupEvent = { JOINED: 1, LEFT: 2 };
export const Kind = { DIRECT: 0, GROUP: 1 };
export const Direction = { OLDER: 0, NEWER: 1 };

// The pushes that are items: each has a message_id and is acknowledged with ACK.
export const ITEM_OPCODES = new Set([Op.DELIVER, Op.FRIEND_EVENT, Op.READ_RECEIPT, Op.GROUP_EVENT]);

// A field is [name, type]; a type is one of the scalar names, a list, or a switch on an
// earlier field's value (the `kind` of HISTORY targets and DELIVER destinations).
const list = (countType, fields) => ({ list: countType, fields });
const byKind = (cases) => ({ switchOn: 'kind', cases });
const TARGET = ['target', byKind({ 0: [['peer', 'str']], 1: [['group_id', 'u64']] })];
const DESTINATION = ['destination', byKind({ 0: [['to', 'str']], 1: [['group_id', 'u64']] })];

export const SCHEMAS = {
  [Op.HELLO]: [['version', 'u16']],
  [Op.PING]: [],
  [Op.REGISTER]: [['username', 'str'], ['salt', 'bytes'], ['iterations', 'u32'],
    ['stored_key', 'bytes'], ['server_key', 'bytes']],
  [Op.LOGIN_START]: [['username', 'str'], ['client_nonce', 'bytes']],
  [Op.LOGIN_FINISH]: [['client_proof', 'bytes'], ['device_id', 'u64'], ['device_name', 'str']],
  [Op.LOGOUT]: [],
  [Op.REAUTH_START]: [['client_nonce', 'bytes']],
  [Op.PASSWORD_CHANGE]: [['client_proof', 'bytes'], ['salt', 'bytes'], ['iterations', 'u32'],
    ['stored_key', 'bytes'], ['server_key', 'bytes']],
  [Op.ACCOUNT_DELETE]: [['client_proof', 'bytes']],
  [Op.FRIEND_REQUEST]: [['username', 'str']],
  [Op.FRIEND_ACCEPT]: [['username', 'str']],
  [Op.FRIEND_DECLINE]: [['username', 'str']],
  [Op.FRIEND_REMOVE]: [['username', 'str']],
  [Op.FRIEND_LIST]: [],
  [Op.SEND]: [['to', 'str'], ['client_msg_id', 'u64'], ['body', 'str']],
  [Op.ACK]: [['up_to_message_id', 'u64']],
  [Op.HISTORY]: [['kind', 'u8'], TARGET, ['direction', 'u8'], ['from_message_id', 'u64'],
    ['limit', 'u16']],
  [Op.READ]: [['peer', 'str'], ['up_to_message_id', 'u64']],
  [Op.GROUP_CREATE]: [['name', 'str']],
  [Op.GROUP_INVITE]: [['group_id', 'u64'], ['username', 'str']],
  [Op.GROUP_LEAVE]: [['group_id', 'u64']],
  [Op.GROUP_MEMBERS]: [['group_id', 'u64']],
  [Op.GROUP_LIST]: [],
  [Op.GROUP_SEND]: [['group_id', 'u64'], ['client_msg_id', 'u64'], ['body', 'str']],
  [Op.DEVICE_LIST]: [],
  [Op.DEVICE_REMOVE]: [['device_id', 'u64']],

  [Op.OK]: [],
  [Op.HELLO_OK]: [['version', 'u16'], ['server', 'str'], ['max_frame', 'u32'],
    ['max_frame_before_login', 'u32'], ['max_body', 'u32'], ['idle_timeout_secs', 'u32'],
    ['login_timeout_secs', 'u32'], ['min_kdf_iterations', 'u32']],
  [Op.PONG]: [],
  [Op.ERROR]: [['code', 'u16'], ['message', 'str']],
  [Op.LOGIN_CHALLENGE]: [['salt', 'bytes'], ['iterations', 'u32'], ['nonce', 'bytes']],
  [Op.LOGIN_OK]: [['server_signature', 'bytes'], ['username', 'str']],
  [Op.FRIEND_REQUEST_OK]: [['outcome', 'u8']],
  [Op.FRIEND_LIST_RESULT]: [['friends', list('u16', [['username', 'str'], ['online', 'u8']])],
    ['incoming', list('u16', [['username', 'str']])],
    ['outgoing', list('u16', [['username', 'str']])]],
  [Op.SENT]: [['message_id', 'u64'], ['timestamp_ms', 'u64']],
  [Op.HISTORY_PAGE]: [['messages', list('u16', [['message_id', 'u64'], ['timestamp_ms', 'u64'],
    ['sender', 'str'], ['body', 'str']])], ['next', 'u64']],
  [Op.GROUP_CREATED]: [['group_id', 'u64']],
  [Op.GROUP_MEMBERS_RESULT]: [['group_id', 'u64'],
    ['members', list('u32', [['username', 'str'], ['online', 'u8'], ['owner', 'u8']])]],
  [Op.GROUP_LIST_RESULT]: [['groups', list('u16', [['group_id', 'u64'], ['name', 'str'],
    ['owner', 'str'], ['members', 'u32']])]],
  [Op.RETRY_LATER]: [['code', 'u16'], ['retry_after_ms', 'u32'], ['message', 'str']],
  [Op.DEVICE_LIST_RESULT]: [['devices', list('u16', [['device_id', 'u64'], ['name', 'str'],
    ['last_seen_ms', 'u64'], ['online', 'u8'], ['current', 'u8']])]],

  [Op.DELIVER]: [['message_id', 'u64'], ['timestamp_ms', 'u64'], ['from', 'str'], ['kind', 'u8'],
    DESTINATION, ['body', 'str']],
  [Op.FRIEND_EVENT]: [['message_id', 'u64'], ['timestamp_ms', 'u64'], ['event', 'u8'],
    ['username', 'str']],
  [Op.PRESENCE]: [['username', 'str'], ['online', 'u8']],
  [Op.READ_RECEIPT]: [['message_id', 'u64'], ['timestamp_ms', 'u64'], ['reader', 'str'],
    ['peer', 'str'], ['up_to_message_id', 'u64']],
  [Op.SYNC_DONE]: [['count', 'u32']],
  [Op.GROUP_EVENT]: [['message_id', 'u64'], ['timestamp_ms', 'u64'], ['group_id', 'u64'],
    ['event', 'u8'], ['username', 'str'], ['group_name', 'str']],
  [Op.SYNC_GAP]: [['after_message_id', 'u64'], ['up_to_message_id', 'u64'], ['skipped', 'u32']],
};

/** A frame that breaks the wire format: the connection cannot be trusted any more. */
export class ProtocolError extends Error {}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });
const U64_MAX = (1n << 64n) - 1n;

/** Collects the bytes of one frame; `frame` prepends the header. */
class Writer {
  constructor() { this.chunks = []; this.length = 0; }

  push(bytes) { this.chunks.push(bytes); this.length += bytes.length; }

  int(value, size) {
    const bytes = new Uint8Array(size);
    const view = new DataView(bytes.buffer);
    if (size === 8) {
      const big = BigInt(value);
      if (big < 0n || big > U64_MAX) throw new RangeError(`u64 out of range: ${value}`);
      view.setBigUint64(0, big);
    } else {
      const max = 2 ** (size * 8) - 1;
      if (!Number.isInteger(value) || value < 0 || value > max) {
        throw new RangeError(`u${size * 8} out of range: ${value}`);
      }
      if (size === 1) view.setUint8(0, value);
      else if (size === 2) view.setUint16(0, value);
      else view.setUint32(0, value);
    }
    this.push(bytes);
  }

  blob(bytes) {
    if (bytes.length > 0xffff) throw new RangeError('a str or bytes field holds at most 65535 bytes');
    this.int(bytes.length, 2);
    this.push(bytes);
  }

  field(type, value) {
    switch (type) {
      case 'u8': return this.int(value, 1);
      case 'u16': return this.int(value, 2);
      case 'u32': return this.int(value, 4);
      case 'u64': return this.int(value, 8);
      case 'str': return this.blob(utf8.encode(value));
      case 'bytes': return this.blob(new Uint8Array(value));
      default: throw new TypeError(`unknown field type ${type}`);
    }
  }

  fields(schema, values) {
    for (const [name, type] of schema) {
      if (type.switchOn) {
        this.fields(type.cases[values[type.switchOn]] || [], values);
      } else if (type.list) {
        const records = values[name];
        this.field(type.list, records.length);
        for (const record of records) this.fields(type.fields, record);
      } else {
        if (!(name in values)) throw new TypeError(`field ${name} is missing`);
        this.field(type, values[name]);
      }
    }
  }

  bytes() {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const chunk of this.chunks) { out.set(chunk, at); at += chunk.length; }
    return out;
  }
}

/** Reads fields from a body, refusing short, trailing or malformed bytes. */
class Reader {
  constructor(bytes) { this.bytes = bytes; this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength); this.at = 0; }

  take(count, what) {
    if (this.at + count > this.bytes.length) throw new ProtocolError(`frame ends inside ${what}`);
    const at = this.at;
    this.at += count;
    return at;
  }

  field(type, name) {
    switch (type) {
      case 'u8': return this.view.getUint8(this.take(1, name));
      case 'u16': return this.view.getUint16(this.take(2, name));
      case 'u32': return this.view.getUint32(this.take(4, name));
      case 'u64': return this.view.getBigUint64(this.take(8, name));
      case 'bytes': case 'str': {
        const length = this.view.getUint16(this.take(2, name));
        const at = this.take(length, name);
        const raw = this.bytes.slice(at, at + length);
        if (type === 'bytes') return raw;
        try { return strictUtf8.decode(raw); } catch { throw new ProtocolError(`${name} is not UTF-8`); }
      }
      default: throw new TypeError(`unknown field type ${type}`);
    }
  }

  fields(schema, out) {
    for (const [name, type] of schema) {
      if (type.switchOn) {
        const cases = type.cases[out[type.switchOn]];
        if (!cases) throw new ProtocolError(`unknown ${type.switchOn} ${out[type.switchOn]}`);
        this.fields(cases, out);
      } else if (type.list) {
        const count = this.field(type.list, name);
        const records = [];
        for (let i = 0; i < count; i++) records.push(this.fields(type.fields, {}));
        out[name] = records;
      } else {
        out[name] = this.field(type, name);
      }
    }
    return out;
  }
}

/** The bytes of one whole frame (length prefix included) for `opcode` with `fields`. */
export function encodeFrame(opcode, requestId, fields = {}) {
  const schema = SCHEMAS[opcode];
  if (!schema) throw new TypeError(`no schema for opcode ${opcode}`);
  const body = new Writer();
  body.fields(schema, fields);
  const frame = new Writer();
  frame.int(5 + body.length, 4);
  frame.int(opcode, 1);
  frame.int(requestId, 4);
  frame.push(body.bytes());
  return frame.bytes();
}

/**
 * Decodes one whole frame, as one WebSocket message carries it. Returns
 * `{opcode, name, requestId, fields}`; an opcode without a schema (a newer server) decodes
 * with `fields` null so the caller can ignore it. Throws ProtocolError when the bytes break
 * the format.
 */
export function decodeFrame(data) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (bytes.length < 9) throw new ProtocolError(`a frame of ${bytes.length} bytes is too short`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = view.getUint32(0);
  if (length !== bytes.length - 4) {
    throw new ProtocolError(`length says ${length} bytes, the message holds ${bytes.length - 4}`);
  }
  const opcode = view.getUint8(4);
  const requestId = view.getUint32(5);
  const schema = SCHEMAS[opcode];
  const frame = { opcode, name: OP_NAMES[opcode] || `0x${opcode.toString(16)}`, requestId, fields: null };
  if (!schema) return frame;
  const reader = new Reader(bytes.subarray(9));
  frame.fields = reader.fields(schema, {});
  if (reader.at !== reader.bytes.length) {
    throw new ProtocolError(`${frame.name} has ${reader.bytes.length - reader.at} bytes too many`);
  }
  return frame;
}

/** The wire bytes of a `str` (u16 length, UTF-8), for the SCRAM AuthMessage. */
export function wireStr(value) {
  const writer = new Writer();
  writer.field('str', value);
  return writer.bytes();
}

/** The wire bytes of a `bytes` field (u16 length, raw). */
export function wireBytes(value) {
  const writer = new Writer();
  writer.field('bytes', value);
  return writer.bytes();
}

/** The wire bytes of a `u32`. */
export function wireU32(value) {
  const writer = new Writer();
  writer.field('u32', value);
  return writer.bytes();
}

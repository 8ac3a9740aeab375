// One WebSocket to the server: one protocol frame per binary message in each direction,
// requests matched to their responses by request id, pushes handed to the caller.
// A Connection is used for one socket's life; app.js makes a new one to reconnect.

import { Op, decodeFrame, encodeFrame, ProtocolError } from './protocol.js';

/** An ERROR or RETRY_LATER answer: `code` is what the page acts on, `message` is shown. */
export class ServerError extends Error {
  constructor(fields, retryAfterMs = null) {
    super(fields.message);
    this.code = fields.code;
    this.retryAfterMs = retryAfterMs;
  }
}

/** The socket closed (or never opened) before the answer came; the message is a sentence. */
export class Closed extends Error {}

/** The address of the server's WebSocket: the page's own host, wss when the page is https. */
export function socketUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

export class Connection {
  /**
   * `onPush(frame)` gets every frame with request id 0 (pushes and the unasked ERROR before
   * a close); `onClose(error)` is called once when the socket ends, with the last unasked
   * ERROR (a ServerError) or null.
   */
  constructor({ onPush, onClose }) {
    this.onPush = onPush;
    this.onClose = onClose;
    this.pending = new Map();
    this.nextRequestId = 1;
    this.closing = null;
    this.closed = false;
    this.socket = null;
  }

  /** Opens the socket; resolves once it is open, rejects with Closed if it cannot be. */
  open() {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(socketUrl());
      socket.binaryType = 'arraybuffer';
      this.socket = socket;
      socket.onopen = () => resolve();
      socket.onmessage = (event) => this.receive(event.data);
      socket.onclose = () => {
        reject(new Closed('Could not reach the server.'));
        this.ended();
      };
      socket.onerror = () => {};
    });
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  receive(data) {
    if (!(data instanceof ArrayBuffer)) {
      this.abort('the server sent a text message');
      return;
    }
    let frame;
    try {
      frame = decodeFrame(data);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      this.abort(`the server sent a frame this page cannot read (${error.message})`);
      return;
    }
    if (frame.requestId === 0) {
      if (frame.opcode === Op.ERROR) this.closing = new ServerError(frame.fields);
      this.onPush(frame);
      return;
    }
    const waiter = this.pending.get(frame.requestId);
    if (!waiter) return;
    this.pending.delete(frame.requestId);
    if (frame.opcode === Op.ERROR) waiter.reject(new ServerError(frame.fields));
    else if (frame.opcode === Op.RETRY_LATER) waiter.reject(new ServerError(frame.fields, frame.fields.retry_after_ms));
    else if (frame.fields === null) waiter.reject(new ProtocolError(`unexpected answer ${frame.name}`));
    else waiter.resolve(frame.fields);
  }

  /** Sends a request; resolves with the response's fields, rejects with ServerError or Closed. */
  request(opcode, fields = {}) {
    if (!this.isOpen) return Promise.reject(new Closed('Not connected to the server.'));
    const requestId = this.nextRequestId;
    this.nextRequestId = requestId >= 0xffffffff ? 1 : requestId + 1;
    const bytes = encodeFrame(opcode, requestId, fields);
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, { resolve, reject });
      this.socket.send(bytes);
    });
  }

  /** Closes the socket from this side (logout, or a server that broke the protocol). */
  close() {
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
    this.ended();
  }

  abort(reason) {
    this.closing = new ProtocolError(reason);
    this.close();
  }

  ended() {
    if (this.closed) return;
    this.closed = true;
    const lost = new Closed(this.closing ? `The server closed the connection: ${this.closing.message}`
      : 'The connection to the server was lost.');
    for (const waiter of this.pending.values()) waiter.reject(lost);
    this.pending.clear();
    this.onClose(this.closing);
  }
}

// SCRAM-SHA-256 of PROTOCOL.md section 5, computed in the browser with WebCrypto: the
// password is turned into keys here and never leaves the page.
//
// What a login needs afterwards is the derived keys (ClientKey and ServerKey for one salt
// and iteration count), not the password: app.js keeps them in memory for reconnecting and
// in localStorage only when the user ticks "remember me". They are password-equivalent for
// this server, never for any other (the salt is the server's).

import { wireBytes, wireStr, wireU32 } from './protocol.js';

/**
 * Iterations for a new password: OWASP's 600,000 for PBKDF2-HMAC-SHA256, as the bundled
 * terminal clients use, or the server's minimum when it asks for more. The server's
 * --min-kdf-iterations is the operator's floor, never a reason to go below this figure.
 */
export const DEFAULT_ITERATIONS = 600000;

/** Iterations to register with, given HELLO_OK's min_kdf_iterations. */
export function registrationIterations(minKdfIterations) {
  return Math.max(DEFAULT_ITERATIONS, minKdfIterations);
}

const subtle = globalThis.crypto && globalThis.crypto.subtle;
const utf8 = new TextEncoder();

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}

async function hmac(key, message) {
  const imported = await subtle.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return new Uint8Array(await subtle.sign('HMAC', imported, message));
}

async function sha256(data) {
  return new Uint8Array(await subtle.digest('SHA-256', data));
}

function xor(left, right) {
  return left.map((byte, i) => byte ^ right[i]);
}

/** Random bytes from the browser's CSPRNG. */
export function randomBytes(count) {
  return crypto.getRandomValues(new Uint8Array(count));
}

/** True when this page may use WebCrypto (a secure context: https, or http on loopback). */
export function available() {
  return Boolean(subtle);
}

/**
 * The keys of `password` for `salt` and `iterations`:
 * `{salt, iterations, clientKey, storedKey, serverKey}`, each key a Uint8Array of 32 bytes.
 */
export async function deriveKeys(password, salt, iterations) {
  const material = await subtle.importKey('raw', utf8.encode(password), 'PBKDF2', false, ['deriveBits']);
  const salted = new Uint8Array(await subtle.deriveBits(
    { name: 'PBKDF2', hash: 'SHA-256', salt, iterations }, material, 256));
  return keysFromSalted(salt, iterations, salted);
}

async function keysFromSalted(salt, iterations, salted) {
  const clientKey = await hmac(salted, utf8.encode('Client Key'));
  const serverKey = await hmac(salted, utf8.encode('Server Key'));
  return { salt: new Uint8Array(salt), iterations, clientKey, storedKey: await sha256(clientKey), serverKey };
}

/** Rebuilds keys from the parts kept in storage (ClientKey and ServerKey). */
export async function keysFromParts(salt, iterations, clientKey, serverKey) {
  return { salt, iterations, clientKey, storedKey: await sha256(clientKey), serverKey };
}

/** True when `keys` were derived for this challenge's salt and iteration count. */
export function keysMatch(keys, salt, iterations) {
  return keys.iterations === iterations && keys.salt.length === salt.length
    && keys.salt.every((byte, i) => byte === salt[i]);
}

/**
 * The AuthMessage: the username as sent in LOGIN_START, the client nonce, the salt, the
 * iteration count and the combined nonce, each exactly as on the wire (length prefixes too).
 */
export function authMessage(username, clientNonce, salt, iterations, nonce) {
  return concat(wireStr(username), wireBytes(clientNonce), wireBytes(salt), wireU32(iterations),
    wireBytes(nonce));
}

/** ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage). */
export async function clientProof(keys, message) {
  return xor(keys.clientKey, await hmac(keys.storedKey, message));
}

/** ServerSignature = HMAC(ServerKey, AuthMessage): what LOGIN_OK must carry. */
export async function serverSignature(keys, message) {
  return hmac(keys.serverKey, message);
}

/** Compares two byte strings without an early exit. */
export function sameBytes(left, right) {
  if (left.length !== right.length) return false;
  let diff = 0;
  for (let i = 0; i < left.length; i++) diff |= left[i] ^ right[i];
  return diff === 0;
}

export function toBase64(bytes) {
  return btoa(String.fromCharCode(...bytes));
}

export function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

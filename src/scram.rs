//! SCRAM-SHA-256 math (RFC 5802 / RFC 7677) and the AuthMessage of PROTOCOL.md §5.
//!
//! Both halves live here: the server's proof check, and the client's key derivation and proof,
//! which the benchmark and the tests use. The expensive PBKDF2 runs only on the client side.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Bytes in a SHA-256 output, and so in every SCRAM key, proof and signature.
pub const KEY_LEN: usize = 32;
/// Bytes of the server's half of the login nonce.
pub const SERVER_NONCE_LEN: usize = 24;
/// The iteration count the bundled clients use, and that fake challenges claim.
pub const DEFAULT_ITERATIONS: u32 = 600_000;

pub type Key = [u8; KEY_LEN];

fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

/// The keys a client derives from its password; the server stores only `stored` and `server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKeys {
    pub client: Key,
    pub stored: Key,
    pub server: Key,
}

/// Runs PBKDF2-HMAC-SHA256 and derives the SCRAM keys. Slow on purpose: client side only.
pub fn derive_keys(password: &[u8], salt: &[u8], iterations: u32) -> ClientKeys {
    let mut salted = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
    keys_from_salted_password(&salted)
}

/// Derives the SCRAM keys from an already computed SaltedPassword.
pub fn keys_from_salted_password(salted: &Key) -> ClientKeys {
    let client = hmac(salted, &[b"Client Key"]);
    ClientKeys { client, stored: sha256(&client), server: hmac(salted, &[b"Server Key"]) }
}

/// Builds the AuthMessage: each field with its wire length prefix, in the order of §5.
pub fn auth_message(username: &str, client_nonce: &[u8], salt: &[u8], iterations: u32, nonce: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + username.len() + client_nonce.len() + salt.len() + nonce.len());
    for field in [username.as_bytes(), client_nonce, salt] {
        out.extend_from_slice(&(field.len() as u16).to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&iterations.to_be_bytes());
    out.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
    out.extend_from_slice(nonce);
    out
}

/// The client's proof for an AuthMessage.
pub fn client_proof(keys: &ClientKeys, auth_message: &[u8]) -> Key {
    let signature = hmac(&keys.stored, &[auth_message]);
    xor(&keys.client, &signature)
}

/// The signature the server returns, and the client checks.
pub fn server_signature(server_key: &[u8], auth_message: &[u8]) -> Key {
    hmac(server_key, &[auth_message])
}

/// Checks a client proof against the stored verifier in constant time.
pub fn verify_proof(stored_key: &[u8], auth_message: &[u8], proof: &[u8]) -> bool {
    if proof.len() != KEY_LEN || stored_key.len() != KEY_LEN {
        return false;
    }
    let signature = hmac(stored_key, &[auth_message]);
    let mut client_key = [0u8; KEY_LEN];
    for i in 0..KEY_LEN {
        client_key[i] = proof[i] ^ signature[i];
    }
    constant_time_eq(&sha256(&client_key), stored_key)
}

/// The salt shown for a name that is not registered: stable per name, unguessable without the
/// server secret, so an unknown user looks like a wrong password.
pub fn fake_salt(server_secret: &[u8], name_key: &str) -> [u8; 16] {
    let full = hmac(server_secret, &[b"fake-salt", name_key.as_bytes()]);
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&full[..16]);
    salt
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_LEN];
    for i in 0..KEY_LEN {
        out[i] = a[i] ^ b[i];
    }
    out
}

/// Compares without an early exit, so timing does not tell how many bytes matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut count = 0;
        let mut out = Vec::new();
        for c in s.bytes().filter(|&c| c != b'=') {
            bits = (bits << 6) | ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
            count += 6;
            if count >= 8 {
                count -= 8;
                out.push((bits >> count) as u8);
            }
        }
        out
    }

    /// RFC 7677 §3: user "user", password "pencil", 4096 iterations.
    #[test]
    fn rfc7677_test_vector() {
        let salt = b64("W22ZaJ0SNY7soEsUEjb6gQ==");
        let keys = derive_keys(b"pencil", &salt, 4096);
        let auth = b"n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = client_proof(&keys, auth);
        assert_eq!(proof.to_vec(), b64("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="));
        assert_eq!(server_signature(&keys.server, auth).to_vec(), b64("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
        assert!(verify_proof(&keys.stored, auth, &proof));
        let mut wrong = proof;
        wrong[0] ^= 1;
        assert!(!verify_proof(&keys.stored, auth, &wrong));
        assert!(!verify_proof(&keys.stored, auth, &proof[..31]));
    }

    #[test]
    fn auth_message_is_length_prefixed() {
        let m = auth_message("al", &[1], &[2, 3], 4096, &[1, 9]);
        assert_eq!(m, vec![0, 2, b'a', b'l', 0, 1, 1, 0, 2, 2, 3, 0, 0, 0x10, 0, 0, 2, 1, 9]);
    }

    #[test]
    fn fake_salt_is_stable_per_name() {
        assert_eq!(fake_salt(b"s", "bob"), fake_salt(b"s", "bob"));
        assert_ne!(fake_salt(b"s", "bob"), fake_salt(b"s", "eve"));
        assert_ne!(fake_salt(b"s", "bob"), fake_salt(b"t", "bob"));
    }
}

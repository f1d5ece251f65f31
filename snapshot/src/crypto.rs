//! Hashing and encryption at rest.
//!
//! Without a key, ids are plain SHA-256 of the plaintext and objects are stored as they
//! are, so `sha256sum objects/ab/ab…` checks a chunk by hand. With a 32-byte master key
//! (from a Kubernetes Secret) two subkeys are derived with HMAC-SHA256 over fixed labels
//! and the repository id:
//!
//! - the *id key*: chunk and snapshot ids are HMAC-SHA256(id key, plaintext), so an id
//!   reveals nothing about content (no confirming a guessed file by its hash);
//! - the *encryption key*: every object is AES-256-GCM with a random 96-bit nonce per
//!   object, stored as `0x01 || nonce || ciphertext || tag`, with the object's kind and name
//!   as associated data so an object cannot be passed off under another name.
//!
//! The config object carries a key check (a fixed plaintext sealed with the encryption
//! key) so a wrong key is refused at open, before anything is read or written.

use std::ops::Range;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const FORMAT_ENCRYPTED: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes an encrypted object adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// The caller's 32-byte master key. Debug never prints it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// Wraps raw key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// Accepts exactly 32 raw bytes, or 64 hex digits (trailing whitespace ignored), the two
    /// forms a Secret's value is likely to have.
    pub fn from_secret_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() == 32 {
            let mut k = [0u8; 32];
            k.copy_from_slice(bytes);
            return Some(MasterKey(k));
        }
        let text = std::str::from_utf8(bytes).ok()?.trim();
        let mut k = [0u8; 32];
        hex::decode_to_slice(text, &mut k).ok()?;
        Some(MasterKey(k))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// How a repository hashes and seals objects: derived from the config and the caller's key.
#[derive(Clone)]
pub(crate) enum Crypto {
    /// No encryption: SHA-256 ids, plaintext objects.
    Plain,
    /// Keyed ids and AES-256-GCM objects.
    Sealed {
        id_key: [u8; 32],
        cipher: Box<Aes256Gcm>,
    },
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Crypto::Plain => "Crypto::Plain",
            Crypto::Sealed { .. } => "Crypto::Sealed",
        })
    }
}

/// The sealed object failed authentication (wrong key, flipped bits, truncation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenError;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The id of a new repository at `location`: derived, not random, so that agents creating
/// the repository at once compute the same id (and so the same subkeys and config) without
/// talking to each other. Keyed by the master key when there is one, so the id tells
/// nothing about the key; two repositories under one key at two locations differ.
pub(crate) fn repository_id(key: Option<&MasterKey>, location: &str) -> String {
    let label = b"deployctl-snapshot/v1/repo-id/";
    let full = match key {
        Some(k) => hmac(&k.0, &[label, location.as_bytes()]),
        None => Sha256::new()
            .chain_update(label)
            .chain_update(location.as_bytes())
            .finalize()
            .into(),
    };
    hex::encode(&full[..16])
}

/// Appends `0x01 || nonce || ciphertext || tag` of `data` to `out`.
fn seal_with(
    cipher: &Aes256Gcm,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    data: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.reserve(data.len() + OVERHEAD);
    out.push(FORMAT_ENCRYPTED);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(data);
    let tag = cipher
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            aad,
            (&mut out[start + 1 + NONCE_LEN..]).into(),
        )
        .expect("AES-GCM accepts objects up to 64 GiB");
    out.extend_from_slice(&tag);
}

impl Crypto {
    /// Derives the subkeys of `master` for the repository `repo_id`.
    pub(crate) fn sealed(master: &MasterKey, repo_id: &[u8]) -> Self {
        let id_key = hmac(&master.0, &[b"deployctl-snapshot/v1/id-key/", repo_id]);
        let enc_key = hmac(
            &master.0,
            &[b"deployctl-snapshot/v1/encryption-key/", repo_id],
        );
        let cipher = Aes256Gcm::new(&enc_key.into());
        Crypto::Sealed {
            id_key,
            cipher: Box::new(cipher),
        }
    }

    /// True when objects are encrypted.
    pub(crate) fn is_sealed(&self) -> bool {
        matches!(self, Crypto::Sealed { .. })
    }

    /// The content digest used for chunk and snapshot ids.
    pub(crate) fn digest(&self, data: &[u8]) -> [u8; 32] {
        match self {
            Crypto::Plain => Sha256::digest(data).into(),
            Crypto::Sealed { id_key, .. } => hmac(id_key, &[data]),
        }
    }

    /// Seals `data` for storage under `aad` (kind and name); a no-op when plain.
    pub(crate) fn seal(&self, aad: &[u8], data: Vec<u8>) -> Vec<u8> {
        if !self.is_sealed() {
            return data;
        }
        let mut out = Vec::with_capacity(data.len() + OVERHEAD);
        self.seal_into(aad, &data, &mut out);
        out
    }

    /// Seals `data` with a nonce derived from the content (`aad` and `data`), so the same
    /// input always seals to the same bytes. Only for the config's key check, which every
    /// agent creating a repository must write identically; a nonce repeats only for an
    /// identical message, which reveals nothing but that equality.
    pub(crate) fn seal_deterministic(&self, aad: &[u8], data: &[u8]) -> Vec<u8> {
        let Crypto::Sealed { id_key, cipher } = self else {
            return data.to_vec();
        };
        let derived = hmac(id_key, &[b"deployctl-snapshot/v1/nonce/", aad, data]);
        let nonce: [u8; NONCE_LEN] = derived[..NONCE_LEN].try_into().expect("12 bytes");
        let mut out = Vec::new();
        seal_with(cipher, nonce, aad, data, &mut out);
        out
    }

    /// Appends `data` sealed under `aad` to `out` (or `data` itself when plain): lets the
    /// snapshot pipeline reuse one buffer per worker instead of allocating per chunk.
    pub(crate) fn seal_into(&self, aad: &[u8], data: &[u8], out: &mut Vec<u8>) {
        let Crypto::Sealed { cipher, .. } = self else {
            out.extend_from_slice(data);
            return;
        };
        let mut nonce = [0u8; NONCE_LEN];
        // A failing system RNG cannot be worked around; reusing a nonce would be worse.
        getrandom::fill(&mut nonce).expect("system random number generator failed");
        seal_with(cipher, nonce, aad, data, out);
    }

    /// Opens an object sealed under `aad`; returns the plaintext.
    pub(crate) fn open(&self, aad: &[u8], mut data: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        let plain = self.open_in_place(aad, &mut data)?;
        data.truncate(plain.end);
        data.drain(..plain.start);
        Ok(data)
    }

    /// Opens an object sealed under `aad` where it lies (in a buffer the caller reuses);
    /// returns where the plaintext is in `data`. Nothing is decrypted unless the tag
    /// authenticates the whole object.
    pub(crate) fn open_in_place(
        &self,
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<Range<usize>, OpenError> {
        let Crypto::Sealed { cipher, .. } = self else {
            return Ok(0..data.len());
        };
        if data.len() < OVERHEAD || data[0] != FORMAT_ENCRYPTED {
            return Err(OpenError);
        }
        let tag_at = data.len() - TAG_LEN;
        let tag = Tag::try_from(&data[tag_at..]).map_err(|_| OpenError)?;
        let nonce = Nonce::try_from(&data[1..1 + NONCE_LEN]).map_err(|_| OpenError)?;
        cipher
            .decrypt_inout_detached(&nonce, aad, (&mut data[1 + NONCE_LEN..tag_at]).into(), &tag)
            .map_err(|_| OpenError)?;
        Ok(1 + NONCE_LEN..tag_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_refusals() {
        let c = Crypto::sealed(&MasterKey::new([7; 32]), b"repo");
        let sealed = c.seal(b"chunk/x", b"hello world".to_vec());
        assert_eq!(sealed.len(), 11 + OVERHEAD);
        assert_eq!(c.open(b"chunk/x", sealed.clone()).unwrap(), b"hello world");
        assert_eq!(
            c.open(b"chunk/y", sealed.clone()),
            Err(OpenError),
            "other name"
        );
        let other = Crypto::sealed(&MasterKey::new([8; 32]), b"repo");
        assert_eq!(
            other.open(b"chunk/x", sealed.clone()),
            Err(OpenError),
            "other key"
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert_eq!(c.open(b"chunk/x", bad), Err(OpenError), "flip at {i}");
        }
        assert_eq!(
            c.open(b"chunk/x", sealed[..sealed.len() - 1].to_vec()),
            Err(OpenError)
        );
    }

    #[test]
    fn keyed_ids_differ_from_plain_ids() {
        let sealed = Crypto::sealed(&MasterKey::new([7; 32]), b"repo");
        assert_ne!(sealed.digest(b"x"), Crypto::Plain.digest(b"x"));
        assert_eq!(Crypto::Plain.digest(b"abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
    }

    #[test]
    fn secret_forms() {
        assert!(MasterKey::from_secret_bytes(&[1; 32]).is_some());
        let hexkey = format!("{}\n", "ab".repeat(32));
        assert!(MasterKey::from_secret_bytes(hexkey.as_bytes()).is_some());
        assert!(MasterKey::from_secret_bytes(b"short").is_none());
    }
}

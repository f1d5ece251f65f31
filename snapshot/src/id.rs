//! Object identities: 32-byte digests written as lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lowercase hex, the form used in object names and manifests.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                // Only lowercase hex: one spelling per id, so names and manifests compare
                // byte for byte.
                if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(format!("not a 64-digit lowercase hex id: {s:?}"));
                }
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
                Ok($name(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_id!(
    /// A chunk's id: SHA-256 of its plaintext, or HMAC-SHA256 under the repository's id key
    /// when the repository is encrypted.
    ChunkId
);
digest_id!(
    /// A snapshot's id: the digest (same function as chunk ids) of its canonical manifest
    /// bytes.
    SnapshotId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_strictness() {
        let id = ChunkId([0xab; 32]);
        let s = id.to_string();
        assert_eq!(s.parse::<ChunkId>().unwrap(), id);
        assert!(s.to_uppercase().parse::<ChunkId>().is_err());
        assert!(s[1..].parse::<ChunkId>().is_err());
    }
}

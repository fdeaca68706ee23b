//! The encrypted copy of a key's secret that HS256 verification needs.
//!
//! ChaCha20-Poly1305 under the operator's master key (`CHANNELD_MASTER_KEY`, 32 bytes as 64 hex
//! characters). The key id is authenticated with the ciphertext, so a copy moved to another
//! key's row does not decrypt. Stored as `nonce (12 bytes) || ciphertext`.

use std::{fmt, str::FromStr};

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use rand::{RngCore, rngs::OsRng};

const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Self {
        let mut bytes = [0; 32];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn encrypt(&self, key_id: &str, secret: &str) -> Vec<u8> {
        let mut nonce = [0; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: secret.as_bytes(),
            aad: key_id.as_bytes(),
        };
        let ciphertext = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), payload)
            .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory input");
        [nonce.as_slice(), &ciphertext].concat()
    }

    /// `None` when the blob was not made by this master key for this key id.
    pub fn decrypt(&self, key_id: &str, blob: &[u8]) -> Option<String> {
        if blob.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: key_id.as_bytes(),
        };
        let plain = self
            .cipher()
            .decrypt(Nonce::from_slice(nonce), payload)
            .ok()?;
        String::from_utf8(plain).ok()
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new((&self.0).into())
    }
}

impl FromStr for MasterKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim())
            .map_err(|_| "the master key must be 64 hex characters".to_owned())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the master key must be 32 bytes (64 hex characters)".to_owned())?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_only_for_their_own_key_id_and_master_key() {
        let master = MasterKey::generate();
        let blob = master.encrypt("sk_id_a", "sk_secret_xyz");
        assert_eq!(
            master.decrypt("sk_id_a", &blob).as_deref(),
            Some("sk_secret_xyz")
        );
        assert_eq!(
            master.decrypt("sk_id_b", &blob),
            None,
            "bound to its key id"
        );
        assert_eq!(
            MasterKey::generate().decrypt("sk_id_a", &blob),
            None,
            "bound to its master key"
        );
        assert_eq!(master.decrypt("sk_id_a", &blob[..5]), None);
    }

    #[test]
    fn master_keys_parse_from_hex_only() {
        let master = MasterKey::generate();
        assert!(master.to_hex().parse::<MasterKey>().is_ok());
        assert!("abcd".parse::<MasterKey>().is_err());
        assert!("zz".repeat(32).parse::<MasterKey>().is_err());
        assert!(!format!("{master:?}").contains(&master.to_hex()));
    }
}

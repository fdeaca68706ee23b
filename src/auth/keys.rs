//! Key material: generating ids and secrets, parsing the credential forms clients send, and the
//! digest stored in place of the secret.
//!
//! Secrets are 32 random base62 characters (about 190 bits), so a single SHA-256 is enough: a slow
//! KDF protects low-entropy passwords, not random keys. Digests are compared in constant time.

use rand::{Rng, distributions::Alphanumeric, rngs::OsRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const ID_PREFIX: &str = "sk_id_";
const SECRET_PREFIX: &str = "sk_secret_";
const LIVE_PREFIX: &str = "sk_live_";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;

/// A freshly generated key, the only moment its secret exists in clear.
#[derive(Clone)]
pub struct GeneratedKey {
    pub key_id: String,
    pub secret: String,
}

impl GeneratedKey {
    pub fn generate() -> Self {
        Self {
            key_id: format!("{ID_PREFIX}{}", base62(ID_LEN)),
            secret: format!("{SECRET_PREFIX}{}", base62(SECRET_LEN)),
        }
    }

    /// The single-string form `sk_live_<16 id chars>_<32 secret chars>`.
    pub fn live_form(&self) -> String {
        format!(
            "{LIVE_PREFIX}{}_{}",
            &self.key_id[ID_PREFIX.len()..],
            &self.secret[SECRET_PREFIX.len()..]
        )
    }

    pub fn digest(&self) -> [u8; 32] {
        secret_digest(&self.secret)
    }
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A credential as presented by a client, already checked for shape.
#[derive(PartialEq, Eq)]
pub struct Credential<'a> {
    pub key_id: String,
    /// The secret's characters after its `sk_secret_` prefix, as presented.
    secret: &'a str,
}

impl<'a> Credential<'a> {
    /// Accepts `sk_live_<id>_<secret>` and `sk_id_<id>:sk_secret_<secret>`; anything else is `None`.
    pub fn parse(raw: &'a str) -> Option<Self> {
        let (id, secret) = if let Some(rest) = raw.strip_prefix(LIVE_PREFIX) {
            rest.split_once('_')?
        } else {
            let (id, secret) = raw.split_once(':')?;
            (
                id.strip_prefix(ID_PREFIX)?,
                secret.strip_prefix(SECRET_PREFIX)?,
            )
        };
        let well_formed =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !well_formed(id, ID_LEN) || !well_formed(secret, SECRET_LEN) {
            return None;
        }
        Some(Self {
            key_id: [ID_PREFIX, id].concat(),
            secret,
        })
    }

    /// Whether this credential's secret hashes to the stored digest (constant time).
    pub fn matches(&self, stored_digest: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::new()
            .chain_update(SECRET_PREFIX)
            .chain_update(self.secret)
            .finalize()
            .into();
        digest.ct_eq(stored_digest).into()
    }
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

const PUBLISHABLE_PREFIX: &str = "pk_live_";
const PUBLISHABLE_LEN: usize = 24;

/// A new publishable key: `pk_live_` + 24 base62 characters.
pub fn generate_publishable() -> String {
    format!("{PUBLISHABLE_PREFIX}{}", base62(PUBLISHABLE_LEN))
}

/// Whether `raw` has the shape of a publishable key.
pub fn is_publishable(raw: &str) -> bool {
    raw.strip_prefix(PUBLISHABLE_PREFIX).is_some_and(|rest| {
        rest.len() == PUBLISHABLE_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn base62(len: usize) -> String {
    OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shapes() {
        let key = GeneratedKey::generate();
        assert_eq!(key.key_id.len(), ID_PREFIX.len() + ID_LEN);
        assert_eq!(key.secret.len(), SECRET_PREFIX.len() + SECRET_LEN);
        let live = key.live_form();
        assert!(live.starts_with("sk_live_"));
        assert_eq!(live.len(), LIVE_PREFIX.len() + ID_LEN + 1 + SECRET_LEN);
    }

    #[test]
    fn both_credential_forms_parse_to_the_same_key() {
        let key = GeneratedKey::generate();
        let (live_form, pair_form) = (key.live_form(), format!("{}:{}", key.key_id, key.secret));
        let live = Credential::parse(&live_form).expect("live form");
        let pair = Credential::parse(&pair_form).expect("pair form");
        assert!(live == pair);
        assert_eq!(live.key_id, key.key_id);
        assert!(live.matches(&key.digest()));
        assert!(!live.matches(&GeneratedKey::generate().digest()));
    }

    #[test]
    fn publishable_keys_have_their_own_shape() {
        let pk = generate_publishable();
        assert!(is_publishable(&pk), "{pk}");
        assert!(Credential::parse(&pk).is_none(), "never a REST credential");
        assert!(!is_publishable(&pk[..pk.len() - 1]));
    }

    #[test]
    fn malformed_credentials_are_rejected() {
        let key = GeneratedKey::generate();
        let live = key.live_form();
        let cases = [
            String::new(),
            "sk_live_".into(),
            live[..live.len() - 1].to_string(),
            format!("{live}x"),
            live.replace("sk_live_", "pk_live_"),
            format!("{}:{}", key.key_id, &key.secret[..20]),
            format!("{}{}", key.key_id, key.secret),
            format!(
                "{}:{}",
                key.key_id,
                key.secret.replace("sk_secret_", "sk_secret-")
            ),
            format!("sk_live_{}_{}", "é".repeat(8), "a".repeat(32)),
        ];
        for raw in cases {
            assert!(
                Credential::parse(&raw).is_none(),
                "`{raw}` should be malformed"
            );
        }
    }
}

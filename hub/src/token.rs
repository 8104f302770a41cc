//! Secrets: random tokens and their stored form (sha256 hex).

use sha2::{Digest, Sha256};

use crate::error::HubError;

/// Prefix of enrollment keys.
pub const KEY_PREFIX: &str = "opk_";
/// Prefix of agent tokens.
pub const TOKEN_PREFIX: &str = "opt_";

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], HubError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| HubError::Random(e.to_string()))?;
    Ok(b)
}

/// A fresh secret: `prefix` + 32 random bytes in hex.
pub fn new_secret(prefix: &str) -> Result<String, HubError> {
    Ok(format!("{prefix}{}", hex::encode(random_bytes::<32>()?)))
}

/// A fresh public id: `prefix` + 8 random bytes in hex.
pub fn new_id(prefix: &str) -> Result<String, HubError> {
    Ok(format!("{prefix}{}", hex::encode(random_bytes::<8>()?)))
}

/// The sha256 of a secret, raw.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The sha256 of a secret as lowercase hex: the only form the hub stores.
pub fn hash_hex(secret: &str) -> String {
    hex::encode(hash(secret))
}

/// The sha256 of some bytes as lowercase hex.
pub fn hash_hex_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compares two digests without an early exit.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Compares two hex digests (as stored) without an early exit; false unless both are
/// valid sha256 hex.
pub fn ct_eq_hex(a: &str, b: &str) -> bool {
    let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
    hex::decode_to_slice(a, &mut x).is_ok()
        && hex::decode_to_slice(b, &mut y).is_ok()
        && ct_eq(&x, &y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret(KEY_PREFIX).unwrap();
        let b = new_secret(KEY_PREFIX).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(hash_hex(&a).len(), 64);
        assert!(ct_eq(&hash(&a), &hash(&a)));
        assert!(!ct_eq(&hash(&a), &hash(&b)));
        assert!(ct_eq_hex(&hash_hex(&a), &hash_hex(&a)));
        assert!(!ct_eq_hex(&hash_hex(&a), &hash_hex(&b)));
        assert!(!ct_eq_hex("zz", "zz"));
    }
}

//! Minimal standard base64 decoding (no dependency), shared with build.rs to validate the
//! compiled-in public keys and used to read key ids for error messages.

/// Decode standard base64 (with or without `=` padding); `None` on any invalid input.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // 6 leftover bits can never be a valid encoding; leftover bits must be zero.
    if bits >= 6 || acc != 0 {
        return None;
    }
    Some(out)
}

/// True when `line` is a minisign Ed25519 public key in base64 (42 bytes, algorithm "Ed").
#[allow(dead_code)] // used by build.rs
pub fn is_minisign_pubkey(line: &str) -> bool {
    matches!(decode(line), Some(b) if b.len() == 42 && &b[..2] == b"Ed")
}

//! Random identifiers: a prefix and 128 random bits in lowercase hex (`req_…`, `rec_…`, `adm_…`).
//!
//! Made on every request, so without `format!`: one allocation and a table lookup per nibble.

/// `prefix` followed by 32 lowercase hex digits of fresh randomness.
pub fn random(prefix: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = DIGITS[((bits >> ((31 - i) * 4)) & 15) as usize];
    }
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_prefix_and_32_hex_digits() {
        let (a, b) = (super::random("req_"), super::random("req_"));
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("req_"));
        assert!(a[4..].bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{a}");
        assert_ne!(a, b);
        // Every digit is used, in every place: no nibble is stuck.
        let ids: Vec<String> = (0..200).map(|_| super::random("")).collect();
        for place in 0..32 {
            let seen: std::collections::HashSet<u8> = ids.iter().map(|id| id.as_bytes()[place]).collect();
            assert_eq!(seen.len(), 16, "place {place}");
        }
    }
}

//! Text helpers shared by payloads that carry bounded strings.

/// The longest prefix of `s` that is at most `max` bytes and ends on a
/// char boundary, so a cut never splits a multibyte character.
pub fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        // Terminates: index 0 is always a boundary.
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// Writes `s` into a fixed field: cut at a char boundary if longer,
/// NUL-padded if shorter (so the reader finds the end at the first NUL).
pub(crate) fn fill_fixed_field(field: &mut [u8], s: &str) {
    let s = truncate_at_char_boundary(s, field.len());
    let (text, rest) = field.split_at_mut(s.len());
    text.copy_from_slice(s.as_bytes());
    rest.fill(0);
}

/// Reads a fixed field written by [`fill_fixed_field`]: the bytes up to
/// the first NUL (or all of them), which must be UTF-8.
pub(crate) fn read_fixed_field(field: &[u8]) -> Result<&str, std::str::Utf8Error> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    std::str::from_utf8(field.get(..end).unwrap_or(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_at_char_boundary("abc", 5), "abc");
        assert_eq!(truncate_at_char_boundary("abc", 3), "abc");
        assert_eq!(truncate_at_char_boundary("abc", 2), "ab");
        // "é" is 2 bytes, "€" is 3, "🦀" is 4.
        assert_eq!(truncate_at_char_boundary("aé", 2), "a");
        assert_eq!(truncate_at_char_boundary("€€", 5), "€");
        assert_eq!(truncate_at_char_boundary("🦀", 3), "");
        assert_eq!(truncate_at_char_boundary("x", 0), "");
    }

    #[test]
    fn fixed_field_round_trip() {
        let mut field = [0xFFu8; 8];
        fill_fixed_field(&mut field, "ab");
        assert_eq!(field, [b'a', b'b', 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_fixed_field(&field), Ok("ab"));
        fill_fixed_field(&mut field, "12345678");
        assert_eq!(read_fixed_field(&field), Ok("12345678"));
        fill_fixed_field(&mut field, "1234567€");
        assert_eq!(field[7], 0);
        assert_eq!(read_fixed_field(&field), Ok("1234567"));
        assert!(read_fixed_field(&[0xC3, 0]).is_err());
    }
}

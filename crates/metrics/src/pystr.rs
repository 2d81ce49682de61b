//! Python 3 `str` helpers that the reference packages rely on: `str.isspace`, `str.rstrip()` and
//! `str.split()` without arguments (CPython 3.11 semantics).

/// Python's `str.isspace()` for one character (also what `re`'s `\s` matches in a `str`
/// pattern). It is Unicode `White_Space` plus the ASCII information separators U+001C..U+001F,
/// which Python counts as whitespace (bidirectional class B/S) and Rust's
/// [`char::is_whitespace`] does not.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Python's `s.split()`: split on runs of whitespace, dropping empty pieces (so it also strips).
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_set() {
        // The full list of `chr(c).isspace()` in CPython 3.11 (Unicode 14).
        let py: Vec<u32> = [
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000,
            0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028,
            0x2029, 0x202f, 0x205f, 0x3000,
        ]
        .to_vec();
        let ours: Vec<u32> = (0..=0x10ffffu32)
            .filter_map(char::from_u32)
            .filter(|&c| is_py_space(c))
            .map(|c| c as u32)
            .collect();
        assert_eq!(ours, py);
    }

    #[test]
    fn split_and_rstrip() {
        assert_eq!(py_rstrip("a b \u{1f}\n\u{3000}"), "a b");
        assert_eq!(
            py_split("  a\u{1c}b\u{a0} c ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(py_split("").count(), 0);
        assert_eq!(py_split(" \t\n").count(), 0);
    }
}

//! No panics and sane ranges on arbitrary input (deterministic pseudo-random strings).

use sightline_metrics::{aggregate, bleu, rouge};

/// Characters that exercise every branch: ASCII letters/digits, whitespace of all kinds
/// (including Python-only U+001C..U+001F), punctuation, symbols, non-Nd digits, combining marks,
/// case-mapping oddities (İ, K), CJK, emoji, control characters.
const PALETTE: &[char] = &[
    'a',
    'b',
    'A',
    'Z',
    '0',
    '7',
    ' ',
    ' ',
    '\n',
    '\t',
    '\r',
    '\u{1c}',
    '\u{1f}',
    '\u{85}',
    '\u{a0}',
    '\u{2028}',
    '\u{3000}',
    '.',
    ',',
    '!',
    '?',
    '-',
    '(',
    ')',
    '"',
    '\'',
    '\u{2014}',
    '\u{ab}',
    '$',
    '+',
    '=',
    '^',
    '\u{a9}',
    '\u{20ac}',
    '\u{b0}',
    '\u{1F600}',
    '\u{663}',
    '\u{ff11}',
    '\u{b2}',
    '\u{301}',
    '\u{130}',
    '\u{212a}',
    '\u{df}',
    '\u{e9}',
    '\u{4e2d}',
    '\u{3002}',
    '\u{0}',
    '\u{7f}',
    '\u{200b}',
    '\u{fffd}',
];

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }

    fn string(&mut self) -> String {
        let len = self.next() % 40;
        (0..len)
            .map(|_| PALETTE[self.next() % PALETTE.len()])
            .collect()
    }
}

#[test]
fn arbitrary_strings_never_panic() {
    let mut rng = Lcg(0x5eed);
    for _ in 0..3000 {
        let (h, r) = (rng.string(), rng.string());
        let b = bleu::sentence_bleu(&h, &r);
        if r.is_empty() {
            assert!(b.is_nan());
        } else {
            assert!((0.0..=100.0 + 1e-9).contains(&b), "{h:?} | {r:?}: {b}");
        }
        let s = rouge::rouge(&r, &h);
        for v in [s.rouge1, s.rouge2, s.rouge_lsum] {
            assert!((0.0..=1.0).contains(&v), "{h:?} | {r:?}: {s:?}");
        }
        assert!(bleu::tokenize_intl(&h).iter().all(|t| !t.is_empty()));
        assert!(rouge::tokenize(&h).iter().all(|t| !t.is_empty()
            && t.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())));
    }
}

#[test]
fn identical_texts() {
    let t = "The watermelon seeds pass through your digestive system.";
    assert!((bleu::sentence_bleu(t, t) - 100.0).abs() < 1e-9);
    assert_eq!(
        rouge::rouge(t, t),
        rouge::RougeScores {
            rouge1: 1.0,
            rouge2: 1.0,
            rouge_lsum: 1.0
        }
    );
    assert_eq!(rouge::rouge_n(t, t, 0), rouge::Score::default());
}

#[test]
fn aggregate_edge_values() {
    assert!(aggregate::mean(&[f64::NAN, 1.0]).is_nan());
    assert_eq!(aggregate::mean(&[f64::INFINITY, 1.0]), f64::INFINITY);
    assert!(aggregate::mean_stderr(&[f64::INFINITY, 1.0]).is_nan());
}

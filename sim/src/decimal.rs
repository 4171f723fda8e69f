//! Fast, exact parsing of the plain numbers a trace CSV is made of (`12.345`, `318`, `3`).
//!
//! Replaying a trace parses every row twice (once to summarise it, once to replay it): on the
//! full-day trace of docs/simulator.md, 4.5 M rows, `str::parse` and the row splitting around
//! it were about a fifth of the run. A plain decimal whose digits, read as an integer, fit in
//! 2⁵³ with at most 22 of them after the point is exactly `digits ÷ 10^decimals`: both are
//! exact doubles and IEEE division rounds correctly, so this is the very value `str::parse`
//! returns (its fast path, Clinger's, is this division). Anything else (signs, exponents,
//! spaces, longer mantissas) gives `None`, and the caller falls back to `str::parse`.

/// Powers of ten that are exact doubles.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];
/// Largest integer below which every integer is an exact double.
const MAX_EXACT: u64 = 1 << 53;

/// `text` as a non-negative decimal (`digits[.digits]`), or `None` if it is not that simple.
pub(crate) fn decimal(text: &[u8]) -> Option<f64> {
    let mut mantissa: u64 = 0;
    let mut digits = 0;
    let mut decimals: Option<usize> = None;
    for &byte in text {
        match byte {
            b'0'..=b'9' => {
                // Below 2⁵³ before, so this cannot overflow.
                mantissa = mantissa * 10 + u64::from(byte - b'0');
                if mantissa > MAX_EXACT {
                    return None;
                }
                digits += 1;
                if let Some(d) = &mut decimals {
                    *d += 1;
                }
            }
            b'.' if decimals.is_none() => decimals = Some(0),
            _ => return None,
        }
    }
    let scale = POW10.get(decimals.unwrap_or(0))?;
    (digits > 0).then(|| mantissa as f64 / scale)
}

/// `text` as a `u8` written in plain digits, or `None` if it is not that simple (or too big).
pub(crate) fn small_uint(text: &[u8]) -> Option<u8> {
    if text.is_empty() || text.len() > 3 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = text.iter().fold(0u16, |v, &b| v * 10 + u16::from(b - b'0'));
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn plain_decimals_parse_exactly_as_str_parse_does() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(14);
        for _ in 0..100_000 {
            let whole: u64 = rng.gen_range(0..1_000_000_000);
            let text = match rng.gen_range(0..3) {
                0 => whole.to_string(),
                1 => format!("{}.{:03}", whole, rng.gen_range(0..1000)),
                _ => format!("{}.{:06}", whole % 100_000, rng.gen_range(0..1_000_000)),
            };
            let expected: f64 = text.parse().unwrap();
            assert_eq!(decimal(text.as_bytes()), Some(expected), "{text}");
        }
        for text in [
            "0",
            "00.5",
            ".5",
            "1.",
            "0.1",
            "9007199254740992",
            "0.0000000000000000000001",
        ] {
            let expected: f64 = text.parse().unwrap();
            assert_eq!(decimal(text.as_bytes()), Some(expected), "{text}");
        }
    }

    #[test]
    fn anything_else_is_left_to_str_parse() {
        for text in [
            "",
            ".",
            "-1",
            "+1",
            "1e3",
            " 1",
            "1 ",
            "1.2.3",
            "inf",
            "NaN",
            "9007199254740993",
            "1.00000000000000000000001",
        ] {
            assert_eq!(decimal(text.as_bytes()), None, "{text:?}");
        }
    }

    #[test]
    fn classes_are_small_plain_integers() {
        assert_eq!(small_uint(b"3"), Some(3));
        assert_eq!(small_uint(b"007"), Some(7));
        assert_eq!(small_uint(b"255"), Some(255));
        for text in ["", "256", "1000", "+1", "-1", " 1", "x"] {
            assert_eq!(small_uint(text.as_bytes()), None, "{text:?}");
        }
    }
}

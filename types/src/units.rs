//! Parsing of sizes given on the command line (`512M`, `4G`).

/// Why a size did not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("`{0}` is not a size: use bytes or a number with K, M, G or T (powers of 1024)")]
pub struct SizeError(pub String);

/// Parses a byte size such as `4096`, `512K`, `256M`, `4G` or `1.5G`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let digits = lower.trim_end_matches(['b', 'i']);
    let (number, shift) = match digits.chars().last() {
        Some('k') => (&digits[..digits.len() - 1], 10),
        Some('m') => (&digits[..digits.len() - 1], 20),
        Some('g') => (&digits[..digits.len() - 1], 30),
        Some('t') => (&digits[..digits.len() - 1], 40),
        _ => (digits, 0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| SizeError(text.to_owned()))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(SizeError(text.to_owned()));
    }
    Ok((value * (1u64 << shift) as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
    }
}

//! Byte sizes as operators write them: `10G`, `512M`, `1.5T`, `4096` (binary units).

/// Parses a size; `K`, `M`, `G`, `T`, `P` (optionally followed by `iB` or `B`) are powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("{text:?} is not a size; write it like 10G or 512M"));
    }
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        other => {
            return Err(format!("unknown size unit {other:?} in {text:?}; use K, M, G, T or P"));
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write it like 10G or 512M"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(format!("size {text:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// `10.0 GiB`-style rendering for humans (the journal crate's, so messages agree).
pub use ferry_journal::dirty::human_bytes as human;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999P").is_err());
        assert_eq!(human(10 << 30), "10.0 GiB");
        assert_eq!(human(12), "12 B");
    }
}

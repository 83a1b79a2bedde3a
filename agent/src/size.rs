//! Byte sizes as operators write them: `10G`, `512M`, `1.5T`, `4096` (binary units); and
//! moments as they read them (`utc`).

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

/// `2026-11-27 14:03:07.123 UTC` from milliseconds since the epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The inverse of [`utc`]: milliseconds since the epoch of a UTC time written
/// `YYYY-MM-DD HH:MM:SS[.mmm][ UTC]` or `YYYY-MM-DDTHH:MM:SS[.mmm]Z`; None for anything
/// else.
pub fn parse_utc(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t.strip_suffix(" UTC").or_else(|| t.strip_suffix('Z')).unwrap_or(t);
    let (date, time) = t.split_once([' ', 'T'])?;
    let num = |s: &str, n: usize| -> Option<i64> {
        (s.len() == n && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let mut d = date.split('-');
    let (y, m, dd) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "000"));
    let mut h = hms.split(':');
    let (hh, mi, ss) = (num(h.next()?, 2)?, num(h.next()?, 2)?, num(h.next()?, 2)?);
    if d.next().is_some() || h.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&dd) {
        return None;
    }
    if hh > 23 || mi > 59 || ss > 59 {
        return None;
    }
    let ms = num(frac, 3)?;
    // Days since 1970-01-01 from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 86400 + hh * 3600 + mi * 60 + ss) * 1000) + ms;
    u64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_read_back_as_written() {
        for ms in [0u64, 1_000, 951_782_400_123, 1_796_280_492_999, 4_102_444_800_000] {
            assert_eq!(parse_utc(&utc(ms)), Some(ms), "{}", utc(ms));
        }
        assert_eq!(
            parse_utc("2026-12-03T07:00:00Z"),
            parse_utc("2026-12-03 07:00:00.000 UTC")
        );
        for bad in [
            "2026-13-01 00:00:00",
            "2026-12-03",
            "yesterday",
            "2026-12-03 25:00:00",
            "12",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

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

    #[test]
    fn utc_renders_calendar_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(super::utc(1_795_789_662_865), "2026-11-27 14:27:42.865 UTC");
    }
}

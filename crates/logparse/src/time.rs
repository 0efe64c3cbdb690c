//! PostgreSQL log timestamps: `2026-11-27 03:05:14.907 UTC` (also without milliseconds, with numeric
//! offsets such as `+03` or `-05:30`, or with a `log_timezone` abbreviation) and `%n` epoch seconds,
//! normalised to milliseconds since the Unix epoch and written back as RFC 3339 UTC.
//!
//! Hand-written rather than `time`'s format parser: this runs once per entry on the hot path, and a
//! fixed-shape digit reader is several times faster than a general format description.

use serde::{Serialize, Serializer};

/// A UTC instant with millisecond precision, serialised as `2026-11-27T03:05:14.907Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Writes RFC 3339 UTC with milliseconds into a stack buffer.
    pub fn to_rfc3339(self) -> [u8; 24] {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        thread_local! {
            // Entries come in time order: the date of the last one is almost always this one's.
            static LAST_DAY: std::cell::Cell<(i64, (i64, u32, u32))> =
                const { std::cell::Cell::new((0, (1970, 1, 1))) };
        }
        let (y, m, d) = LAST_DAY.with(|last| {
            let (day, date) = last.get();
            if day == days {
                return date;
            }
            let date = civil_from_days(days);
            last.set((days, date));
            date
        });
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let y = y.clamp(0, 9999) as u32;
        put(&mut out[0..4], y);
        put(&mut out[5..7], m);
        put(&mut out[8..10], d);
        put(&mut out[11..13], (sod / 3600) as u32);
        put(&mut out[14..16], ((sod / 60) % 60) as u32);
        put(&mut out[17..19], (sod % 60) as u32);
        put(&mut out[20..23], ms as u32);
        out
    }
}

fn put(dst: &mut [u8], mut v: u32) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let buf = self.to_rfc3339();
        f.write_str(std::str::from_utf8(&buf).unwrap_or("invalid"))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buf = self.to_rfc3339();
        s.serialize_str(std::str::from_utf8(&buf).unwrap_or("invalid"))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fff] ZONE` at the start of `b`. Returns the instant (None when the
/// zone is an abbreviation this table does not know) and the bytes the timestamp spans, or None when
/// `b` does not start with a timestamp of that shape.
pub fn parse_pg_time(b: &[u8]) -> Option<(Option<Timestamp>, usize)> {
    let shape = pg_time_shape(b)?;
    Some((shape.instant(b), shape.len))
}

/// The length of the `YYYY-MM-DD HH:MM:SS[.fff] ZONE` timestamp at the start of `b` (as
/// [`parse_pg_time`] reads it), without working out the instant: what prefix matching needs.
pub fn pg_time_len(b: &[u8]) -> Option<usize> {
    pg_time_shape(b).map(|s| s.len)
}

/// Where the parts of a timestamp lie, once its shape is checked.
struct Shape {
    /// Milliseconds (the first three digits of the fraction).
    millis: u32,
    /// Where the fraction's digits end (19 without a fraction).
    fraction_end: usize,
    /// The end of the zone: the timestamp's length.
    len: usize,
}

impl Shape {
    fn instant(&self, b: &[u8]) -> Option<Timestamp> {
        let offset = zone_offset_secs(&b[self.fraction_end + 1..self.len])?;
        let days = days_from_civil(digits(b, 0, 4)? as i64, digits(b, 5, 2)?, digits(b, 8, 2)?);
        let sod = digits(b, 11, 2)? * 3600 + digits(b, 14, 2)? * 60 + digits(b, 17, 2)?;
        let secs = days * 86_400 + sod as i64 - offset as i64;
        Some(Timestamp(secs * 1000 + self.millis as i64))
    }
}

fn pg_time_shape(b: &[u8]) -> Option<Shape> {
    digits(b, 0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || b.get(10) != Some(&b' ') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let minute = digits(b, 14, 2)?;
    digits(b, 17, 2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut pos = 19;
    let mut millis = 0u32;
    if b.get(pos) == Some(&b'.') {
        let start = pos + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return None;
        }
        for i in 0..3 {
            let d = if start + i < end {
                b[start + i] - b'0'
            } else {
                0
            };
            millis = millis * 10 + d as u32;
        }
        pos = end;
    }
    if b.get(pos) != Some(&b' ') {
        return None;
    }
    let zstart = pos + 1;
    let zend = zstart + zone_len(&b[zstart..]);
    if zend == zstart {
        return None;
    }
    Some(Shape {
        millis,
        fraction_end: pos,
        len: zend,
    })
}

/// Remembers the last timestamp's second and zone: log lines come in time order, so most share
/// them with the line before, and only their milliseconds need reading.
#[derive(Debug, Default)]
pub struct TimeCache {
    /// `YYYY-MM-DD HH:MM:SS` and the zone of the last timestamp read (empty: none yet).
    second: Vec<u8>,
    zone: Vec<u8>,
    /// Its instant, milliseconds excluded (None: its zone is unknown).
    base: Option<Timestamp>,
}

impl TimeCache {
    /// [`parse_pg_time`]'s instant of the timestamp at the start of `b`.
    pub fn parse(&mut self, b: &[u8]) -> Option<Timestamp> {
        let shape = pg_time_shape(b)?;
        let zone = &b[shape.fraction_end + 1..shape.len];
        let second = &b[..19];
        if self.second.as_slice() != second || self.zone.as_slice() != zone {
            self.second.clear();
            self.second.extend_from_slice(second);
            self.zone.clear();
            self.zone.extend_from_slice(zone);
            self.base = shape
                .instant(b)
                .map(|t| Timestamp(t.0 - shape.millis as i64));
        }
        self.base.map(|t| Timestamp(t.0 + shape.millis as i64))
    }
}

/// The length of the zone PostgreSQL prints after a timestamp: an abbreviation (letters, as tzdata
/// writes them: `UTC`, `CEST`, `ChST`) or a numeric offset (`+03`, `-0530`; PostgreSQL never
/// prints a colon here). Kept this strict because prefixes put separators right after the zone:
/// `%t:%r:` (Amazon RDS) or `%t-%c-` (Azure) must not read `UTC:` or `UTC-6746c2d1` as a zone.
fn zone_len(b: &[u8]) -> usize {
    match b.first() {
        Some(b'+' | b'-') => {
            let digits = b[1..]
                .iter()
                .take(6)
                .take_while(|c| c.is_ascii_digit())
                .count();
            if matches!(digits, 2 | 4 | 6) {
                1 + digits
            } else if digits > 2 {
                // `+053` is no offset; take the hours only.
                3
            } else {
                0
            }
        }
        _ => b
            .iter()
            .take(8)
            .take_while(|c| c.is_ascii_alphabetic())
            .count(),
    }
}

/// Parses `%n`: epoch seconds with a fractional part (`1732676700.123`).
pub fn parse_epoch(b: &[u8]) -> Option<(Timestamp, usize)> {
    let mut pos = 0;
    let mut secs: i64 = 0;
    while pos < b.len() && b[pos].is_ascii_digit() && pos < 12 {
        secs = secs * 10 + (b[pos] - b'0') as i64;
        pos += 1;
    }
    if pos == 0 || b.get(pos) != Some(&b'.') {
        return None;
    }
    let fstart = pos + 1;
    let mut end = fstart;
    while end < b.len() && b[end].is_ascii_digit() {
        end += 1;
    }
    if end == fstart {
        return None;
    }
    let mut millis = 0i64;
    for i in 0..3 {
        let d = if fstart + i < end {
            b[fstart + i] - b'0'
        } else {
            0
        };
        millis = millis * 10 + d as i64;
    }
    Some((Timestamp(secs * 1000 + millis), end))
}

/// Offset east of UTC in seconds for a zone as PostgreSQL prints it with `%Z`: a numeric offset
/// (`+03`, `-0530`, `+05:30`) or an abbreviation from PostgreSQL's `Default` abbreviation set.
fn zone_offset_secs(z: &[u8]) -> Option<i32> {
    if let Some(&sign) = z.first() {
        if sign == b'+' || sign == b'-' {
            let rest = &z[1..];
            let (h, m, s) = match rest.len() {
                2 => (digits(rest, 0, 2)?, 0, 0),
                4 => (digits(rest, 0, 2)?, digits(rest, 2, 2)?, 0),
                6 => (
                    digits(rest, 0, 2)?,
                    digits(rest, 2, 2)?,
                    digits(rest, 4, 2)?,
                ),
                _ => return None,
            };
            let v = (h * 3600 + m * 60 + s) as i32;
            return Some(if sign == b'-' { -v } else { v });
        }
    }
    const H: i32 = 3600;
    let off = match z {
        b"UTC" | b"GMT" | b"Z" | b"UCT" | b"UT" | b"WET" => 0,
        b"BST" | b"WEST" | b"CET" | b"MET" | b"WAT" => H,
        b"CEST" | b"MEST" | b"EET" | b"SAST" | b"IST" | b"CAT" => 2 * H,
        b"EEST" | b"MSK" | b"EAT" | b"IDT" | b"AST3" => 3 * H,
        b"GST" => 4 * H,
        b"PKT" => 5 * H,
        b"ICT" | b"WIB" => 7 * H,
        b"AWST" | b"HKT" | b"SGT" | b"PHT" | b"WITA" => 8 * H,
        b"JST" | b"KST" | b"WIT" => 9 * H,
        b"ACST" => 9 * H + 1800,
        b"ACDT" => 10 * H + 1800,
        b"AEST" | b"ChST" => 10 * H,
        b"AEDT" => 11 * H,
        b"NZST" => 12 * H,
        b"NZDT" => 13 * H,
        b"NST" => -(3 * H + 1800),
        b"NDT" => -(2 * H + 1800),
        b"ADT" => -3 * H,
        b"AST" | b"EDT" => -4 * H,
        b"EST" | b"CDT" => -5 * H,
        b"CST" | b"MDT" => -6 * H,
        b"MST" | b"PDT" => -7 * H,
        b"PST" | b"AKDT" => -8 * H,
        b"AKST" | b"HDT" => -9 * H,
        b"HST" => -10 * H,
        _ => return None,
    };
    Some(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_utc_with_millis() {
        let (ts, n) = parse_pg_time(b"2026-11-27 03:05:14.907 UTC,x").unwrap();
        assert_eq!(n, 27);
        assert_eq!(ts.unwrap().to_string(), "2026-11-27T03:05:14.907Z");
    }

    #[test]
    fn applies_numeric_offsets_and_abbreviations() {
        let (ts, _) = parse_pg_time(b"2024-02-29 23:30:00 +0530").unwrap();
        assert_eq!(ts.unwrap().to_string(), "2024-02-29T18:00:00.000Z");
        // Separators right after the zone (Amazon RDS, Azure) are not part of it.
        let (ts, n) = parse_pg_time(b"2024-02-29 23:30:00 UTC:[local]:").unwrap();
        assert_eq!(n, 23);
        assert_eq!(ts.unwrap().to_string(), "2024-02-29T23:30:00.000Z");
        let (_, n) = parse_pg_time(b"2024-02-29 23:30:00 UTC-6746c2d1.1a2b-LOG").unwrap();
        assert_eq!(n, 23);
        let (ts, n) = parse_pg_time(b"2024-02-29 23:30:00 -03-6746c2d1.1a2b-LOG").unwrap();
        assert_eq!(n, 23);
        assert_eq!(ts.unwrap().to_string(), "2024-03-01T02:30:00.000Z");
        let (ts, _) = parse_pg_time(b"2024-01-01 00:00:00.5 CET").unwrap();
        assert_eq!(ts.unwrap().to_string(), "2023-12-31T23:00:00.500Z");
        let (ts, _) = parse_pg_time(b"2024-07-01 01:00:00 -03").unwrap();
        assert_eq!(ts.unwrap().to_string(), "2024-07-01T04:00:00.000Z");
        let (ts, n) = parse_pg_time(b"2024-07-01 01:00:00 XYZT rest").unwrap();
        assert!(ts.is_none());
        assert_eq!(n, 24);
    }

    #[test]
    fn parses_epoch() {
        let (ts, n) = parse_epoch(b"1732676700.123 [1]").unwrap();
        assert_eq!(n, 14);
        assert_eq!(ts.to_string(), "2024-11-27T03:05:00.123Z");
    }

    #[test]
    fn rejects_other_shapes() {
        assert!(parse_pg_time(b"2026-13-27 03:05:14 UTC").is_none());
        assert!(parse_pg_time(b"LOG:  hello").is_none());
        assert!(parse_epoch(b"abc").is_none());
    }
}

//! A UTC instant, parsed from the two date formats the service uses; no clock is read here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant in UTC, as the service reports `created_at`.
///
/// Parses RFC 3339 (`2024-12-19T10:00:00Z`, with optional fraction and offset) and the
/// `2024-12-19 10:00:00` form (taken as UTC); deserializes also from a number of Unix seconds.
/// Displays and serializes as RFC 3339 in UTC.
///
/// ```
/// use gptimage_types::Timestamp;
///
/// let a: Timestamp = "2024-12-19T10:00:00Z".parse()?;
/// let b: Timestamp = "2024-12-19 10:00:00".parse()?;
/// let c: Timestamp = "2024-12-19T12:00:00+02:00".parse()?;
/// assert_eq!(a, b);
/// assert_eq!(a, c);
/// assert_eq!(a.unix_seconds(), 1_734_602_400);
/// assert_eq!(c.to_string(), "2024-12-19T10:00:00Z");
/// # Ok::<(), gptimage_types::InvalidTimestamp>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    seconds: i64,
    nanos: u32,
}

/// A string that is not a date in either format the service uses.
///
/// ```
/// assert!("yesterday".parse::<gptimage_types::Timestamp>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a date: expected RFC 3339 (2024-12-19T10:00:00Z) or YYYY-MM-DD HH:MM:SS")]
pub struct InvalidTimestamp(());

impl Timestamp {
    /// The instant `seconds` after 1970-01-01T00:00:00Z, plus `nanos` nanoseconds (capped below
    /// one second).
    ///
    /// ```
    /// use gptimage_types::Timestamp;
    ///
    /// assert_eq!(Timestamp::from_unix(0, 0).to_string(), "1970-01-01T00:00:00Z");
    /// assert_eq!(Timestamp::from_unix(1, 500_000_000).to_string(), "1970-01-01T00:00:01.5Z");
    /// ```
    pub fn from_unix(seconds: i64, nanos: u32) -> Self {
        Self {
            seconds,
            nanos: nanos.min(999_999_999),
        }
    }

    /// Whole seconds since the Unix epoch.
    pub fn unix_seconds(self) -> i64 {
        self.seconds
    }

    /// The fraction of the second, in nanoseconds.
    pub fn subsec_nanos(self) -> u32 {
        self.nanos
    }
}

/// A timestamp is a [`SystemTime`](std::time::SystemTime), to the nanosecond.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use gptimage_types::Timestamp;
///
/// let t: Timestamp = "2024-12-19T10:00:00.25Z".parse().unwrap();
/// let system = SystemTime::from(t);
/// assert_eq!(system, UNIX_EPOCH + Duration::new(1_734_602_400, 250_000_000));
/// assert_eq!(Timestamp::from(system), t);
/// ```
impl From<Timestamp> for std::time::SystemTime {
    fn from(t: Timestamp) -> Self {
        let epoch = std::time::UNIX_EPOCH;
        match u64::try_from(t.seconds) {
            Ok(after) => epoch + std::time::Duration::new(after, t.nanos),
            // Before 1970: step back the whole seconds, then forward the fraction.
            Err(_) => {
                epoch - std::time::Duration::from_secs(t.seconds.unsigned_abs())
                    + std::time::Duration::from_nanos(u64::from(t.nanos))
            }
        }
    }
}

/// A [`SystemTime`](std::time::SystemTime) as a timestamp, to the nanosecond (a time further
/// than `i64::MAX` seconds from 1970 saturates).
impl From<std::time::SystemTime> for Timestamp {
    fn from(time: std::time::SystemTime) -> Self {
        match time.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => Self::from_unix(
                i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                after.subsec_nanos(),
            ),
            Err(before) => {
                let before = before.duration();
                let seconds = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                match before.subsec_nanos() {
                    0 => Self::from_unix(-seconds, 0),
                    nanos => Self::from_unix(-seconds - 1, 1_000_000_000 - nanos),
                }
            }
        }
    }
}

impl FromStr for Timestamp {
    type Err = InvalidTimestamp;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s.trim()).ok_or(InvalidTimestamp(()))
    }
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM]`; no offset means UTC.
fn parse(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 19 || !s.is_char_boundary(19) {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let separators_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !separators_ok
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        for (i, d) in fraction.bytes().take(len.min(9)).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &fraction[len..];
    }
    let offset_seconds = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let o = rest.as_bytes();
            if o.len() != 6 || o[3] != b':' {
                return None;
            }
            let sign = match o[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = (digits(&o[1..3])?, digits(&o[4..6])?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    // A leap second (:60) is folded into the next second, as Unix time does.
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds;
    Some(Timestamp { seconds, nanos })
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day counted from 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.seconds.div_euclid(86_400);
        let secs = self.seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )?;
        if self.nanos != 0 {
            let fraction = format!("{:09}", self.nanos);
            write!(f, ".{}", fraction.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Seconds(i64),
            Float(f64),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Repr::Seconds(s) => Ok(Self::from_unix(s, 0)),
            Repr::Float(f) if f.is_finite() && f.abs() < 1e15 => {
                let seconds = f.floor();
                Ok(Self::from_unix(
                    seconds as i64,
                    ((f - seconds) * 1e9) as u32,
                ))
            }
            Repr::Float(_) => Err(serde::de::Error::custom(InvalidTimestamp(()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_time_round_trips_on_both_sides_of_1970() {
        use std::time::SystemTime;
        for (seconds, nanos) in [
            (0, 0),
            (1_734_602_400, 250_000_000),
            (-1, 0),
            (-1, 999_999_999),
            (-86_400, 500_000_000),
        ] {
            let t = Timestamp::from_unix(seconds, nanos);
            let back = Timestamp::from(SystemTime::from(t));
            assert_eq!(
                (back.unix_seconds(), back.subsec_nanos()),
                (seconds, nanos),
                "{t}"
            );
        }
        let late = Timestamp::from(SystemTime::UNIX_EPOCH - std::time::Duration::new(1, 1));
        assert_eq!(
            (late.unix_seconds(), late.subsec_nanos()),
            (-2, 999_999_999)
        );
    }

    #[test]
    fn both_documented_formats() {
        let cases = [
            ("2024-12-19T10:00:00Z", 1_734_602_400, 0),
            ("2024-12-19 10:00:00", 1_734_602_400, 0),
            ("2024-12-19t10:00:00z", 1_734_602_400, 0),
            ("2024-12-19T10:00:00.250Z", 1_734_602_400, 250_000_000),
            (
                "2024-12-19T10:00:00.123456789123+00:00",
                1_734_602_400,
                123_456_789,
            ),
            ("2024-12-19T05:30:00-04:30", 1_734_602_400, 0),
            ("1969-12-31T23:59:59Z", -1, 0),
            ("2000-02-29 00:00:00", 951_782_400, 0),
        ];
        for (text, seconds, nanos) in cases {
            let t: Timestamp = text.parse().unwrap_or_else(|_| panic!("{text}"));
            assert_eq!(
                (t.unix_seconds(), t.subsec_nanos()),
                (seconds, nanos),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_nonsense() {
        for text in [
            "",
            "2024-12-19",
            "2024-13-01 00:00:00",
            "2023-02-29 00:00:00",
            "2024-12-19T24:00:00Z",
            "2024-12-19T10:00:00.Z",
            "2024-12-19T10:00:00+5",
            "2024-12-19T10:00:00 UTC",
            "2024/12/19 10:00:00",
            "２０２４-12-19 10:00:00",
        ] {
            assert!(text.parse::<Timestamp>().is_err(), "{text}");
        }
    }

    #[test]
    fn display_round_trips() {
        for seconds in [-86_400 * 800, -1, 0, 1_734_602_400, 253_402_300_799] {
            let t = Timestamp::from_unix(seconds, 0);
            assert_eq!(t.to_string().parse::<Timestamp>(), Ok(t));
        }
    }
}

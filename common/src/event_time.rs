//! Fluentd's `EventTime`: seconds and nanoseconds since the Unix epoch, as msgpack ext type 0.
//!
//! Fluentd v1 carries nanosecond timestamps in an extension type rather than a float, so times
//! survive the trip exactly. Both ext encodings are legal on the wire and receivers accept both;
//! we always write `fixext8`, the shorter one, which is what Fluentd and Fluent Bit write too.
//!
//! ## Wire format
//!
//! ```text
//! fixext8: d7 00 | ss ss ss ss | nn nn nn nn      (secs u32 BE, nanos u32 BE)
//! ext8   : c7 08 00 | ss ss ss ss | nn nn nn nn
//! 2021-01-01T00:00:00.123456789Z  ->  d7 00 5f ee 66 00 07 5b cd 15
//! ```
//!
//! Seconds are a `u32`, so the representable range ends in 2106; `now()` and
//! `from_unix_nanos` saturate there rather than wrap.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

const NANOS_PER_SEC: u32 = 1_000_000_000;

/// A point in time with nanosecond precision, as carried by the Forward protocol.
///
/// `nanos` is normally below 10⁹; a peer may send more, and every method carries the excess
/// into the seconds instead of failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventTime {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub secs: u32,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl EventTime {
    /// Bytes of the `fixext8` encoding written by [`EventTime::write_to`].
    pub const ENCODED_LEN: usize = 10;

    /// A time from its parts.
    pub const fn new(secs: u32, nanos: u32) -> Self {
        Self { secs, nanos }
    }

    /// A time from nanoseconds since the epoch, saturating at the end of the `u32` seconds
    /// range.
    pub fn from_unix_nanos(n: u64) -> Self {
        let per_sec = u64::from(NANOS_PER_SEC);
        match u32::try_from(n / per_sec) {
            // The remainder is below 10⁹, so it fits.
            Ok(secs) => Self {
                secs,
                nanos: (n % per_sec) as u32,
            },
            Err(_) => Self {
                secs: u32::MAX,
                nanos: NANOS_PER_SEC - 1,
            },
        }
    }

    /// Nanoseconds since the epoch (cannot overflow: at most about 4.3 × 10¹⁸).
    pub fn unix_nanos(self) -> u64 {
        u64::from(self.secs) * u64::from(NANOS_PER_SEC) + u64::from(self.nanos)
    }

    /// The current wall-clock time (the epoch if the clock is before it).
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => match u32::try_from(d.as_secs()) {
                Ok(secs) => Self {
                    secs,
                    nanos: d.subsec_nanos(),
                },
                Err(_) => Self {
                    secs: u32::MAX,
                    nanos: NANOS_PER_SEC - 1,
                },
            },
            Err(_) => Self::default(),
        }
    }

    /// The `fixext8` encoding.
    pub fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let s = self.secs.to_be_bytes();
        let n = self.nanos.to_be_bytes();
        [0xd7, 0x00, s[0], s[1], s[2], s[3], n[0], n[1], n[2], n[3]]
    }

    /// Appends the `fixext8` encoding (`d7 00` + BE secs + BE nanos).
    pub fn write_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// The time held by an ext type 0 payload, which must be exactly 8 bytes.
    pub fn from_ext_data(data: &[u8]) -> Option<Self> {
        let &[s0, s1, s2, s3, n0, n1, n2, n3] = data else {
            return None;
        };
        Some(Self {
            secs: u32::from_be_bytes([s0, s1, s2, s3]),
            nanos: u32::from_be_bytes([n0, n1, n2, n3]),
        })
    }

    /// RFC 3339 in UTC with 9 fractional digits: `2021-01-01T00:00:00.123456789Z`.
    pub fn to_rfc3339(self) -> String {
        let mut out = Vec::with_capacity(RFC3339_LEN);
        self.write_rfc3339(&mut out);
        // Only ASCII digits and punctuation were written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the [`to_rfc3339`](Self::to_rfc3339) text without allocating (beyond `out`'s
    /// growth): used once per record by outputs.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        let total = u64::from(self.secs) + u64::from(self.nanos / NANOS_PER_SEC);
        let nanos = self.nanos % NANOS_PER_SEC;
        let (year, month, day) = civil_from_days(total / 86_400);
        let sod = total % 86_400;
        let mut buf = [0u8; RFC3339_LEN];
        put(&mut buf[0..4], year);
        buf[4] = b'-';
        put(&mut buf[5..7], month);
        buf[7] = b'-';
        put(&mut buf[8..10], day);
        buf[10] = b'T';
        put(&mut buf[11..13], sod / 3600);
        buf[13] = b':';
        put(&mut buf[14..16], sod / 60 % 60);
        buf[16] = b':';
        put(&mut buf[17..19], sod % 60);
        buf[19] = b'.';
        put(&mut buf[20..29], u64::from(nanos));
        buf[29] = b'Z';
        out.extend_from_slice(&buf);
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`; the year stays 4 digits for every `u32` second.
const RFC3339_LEN: usize = 30;

/// Writes `v` as zero-padded decimal filling `dst` (fixed-size fields, constant indices).
fn put(dst: &mut [u8], mut v: u64) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
/// Howard Hinnant's `civil_from_days`, restricted to non-negative days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn research_vector() {
        let t = EventTime::new(0x5fee_6600, 0x075b_cd15);
        assert_eq!(
            t.to_bytes(),
            [0xd7, 0x00, 0x5f, 0xee, 0x66, 0x00, 0x07, 0x5b, 0xcd, 0x15]
        );
        assert_eq!(t.to_rfc3339(), "2021-01-01T00:00:00.123456789Z");
        assert_eq!(t.to_string(), "2021-01-01T00:00:00.123456789Z");
        assert_eq!(EventTime::from_ext_data(&t.to_bytes()[2..]), Some(t));
        assert_eq!(EventTime::from_ext_data(&[0; 7]), None);
        let mut out = Vec::new();
        t.write_to(&mut out);
        assert_eq!(out.len(), EventTime::ENCODED_LEN);
    }

    #[test]
    fn rfc3339_edges() {
        assert_eq!(
            EventTime::new(0, 0).to_rfc3339(),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            EventTime::new(951_782_400, 1).to_rfc3339(),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            EventTime::new(u32::MAX, 999_999_999).to_rfc3339(),
            "2106-02-07T06:28:15.999999999Z"
        );
        // Excess nanoseconds carry into the seconds.
        assert_eq!(
            EventTime::new(59, 1_500_000_000).to_rfc3339(),
            "1970-01-01T00:01:00.500000000Z"
        );
        assert_eq!(
            EventTime::new(u32::MAX, u32::MAX).to_rfc3339().len(),
            RFC3339_LEN
        );
    }

    #[test]
    fn unix_nanos_round_trip_and_saturation() {
        let t = EventTime::new(1_700_000_000, 123);
        assert_eq!(EventTime::from_unix_nanos(t.unix_nanos()), t);
        assert_eq!(
            EventTime::from_unix_nanos(u64::MAX),
            EventTime::new(u32::MAX, 999_999_999)
        );
        let now = EventTime::now();
        assert!(now.secs > 1_600_000_000 && now.nanos < NANOS_PER_SEC);
        assert!(EventTime::new(1, 0) < EventTime::new(1, 1));
    }

    proptest::proptest! {
        #[test]
        fn rfc3339_matches_chrono(secs in proptest::num::u32::ANY, nanos in 0u32..NANOS_PER_SEC) {
            let expected = chrono::DateTime::from_timestamp(i64::from(secs), nanos)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            proptest::prop_assert_eq!(EventTime::new(secs, nanos).to_rfc3339(), expected);
        }
    }
}

//! Dates for trace headers and mbox separators, computed from the Unix clock without a crate.
//!
//! Interface:
//! - `rfc5322(time)`: `Fri, 27 Nov 2026 05:06:52 +0000`, for `Received:` and `Date:`.
//! - `asctime(time)`: `Fri Nov 27 05:06:52 2026`, for the mbox `From ` line.
//! - `sortable(time)`: `20261127-050652`, for file names that `ls` lists in time order.
//! - `unix_now()` and `system_time(seconds)`: the clock as whole seconds since 1970, as the
//!   queue files and message ids keep it.
//!
//! Both are in UTC. A time before 1970 is clamped to the epoch (a mail server's clock never
//! goes there, and the arithmetic below then needs no negative numbers).
//!
//! Standards: RFC 5322 §3.3, RFC 4155 §2

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECONDS_PER_DAY: u64 = 86_400;

/// `day-name = "Mon" / "Tue" / ...` (RFC 5322 §3.3), indexed by days since Sunday.
const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// `month = "Jan" / "Feb" / ...` (RFC 5322 §3.3), indexed by month - 1.
const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// 1970-01-01 was a Thursday: add this to the day number to count from a Sunday.
const EPOCH_WEEKDAY: u64 = 4;

/// A moment split into the fields people write, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: u64,
    /// 1 = January.
    month: u64,
    /// 1..=31.
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
    /// 0 = Sunday.
    weekday: u64,
}

/// `date-time = [ day-of-week "," ] date time` (RFC 5322 §3.3), always in UTC: `+0000`.
pub fn rfc5322(time: SystemTime) -> String {
    let c = civil(time);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAY_NAMES[c.weekday as usize],
        c.day,
        MONTH_NAMES[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// C's `asctime()` without its newline: 24 characters, the day padded with a space
/// (`Sat Jan  3 01:05:34 1996`). RFC 4155 §2 asks for this form, in UTC, on the `From ` line.
pub fn asctime(time: SystemTime) -> String {
    let c = civil(time);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAY_NAMES[c.weekday as usize],
        MONTH_NAMES[(c.month - 1) as usize],
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.year
    )
}

/// `YYYYMMDD-HHMMSS` in UTC: names that sort as text sort by time.
pub fn sortable(time: SystemTime) -> String {
    let c = civil(time);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Seconds since 1970 now (0 if the clock is before the epoch).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The time `unix` seconds after 1970.
pub fn system_time(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

/// Split a time into date and clock fields (UTC); times before the epoch become the epoch.
fn civil(time: SystemTime) -> Civil {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let days = seconds / SECONDS_PER_DAY;
    let of_day = seconds % SECONDS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: of_day / 3600,
        minute: of_day % 3600 / 60,
        second: of_day % 60,
        weekday: (days + EPOCH_WEEKDAY) % 7,
    }
}

/// (year, month, day) of the day `days` after 1970-01-01.
///
/// Howard Hinnant's `civil_from_days`, from "chrono-Compatible Low-Level Date Algorithms"
/// (<http://howardhinnant.github.io/date_algorithms.html>), here for days >= 0 only.
/// The trick: count years from 1 March, so the leap day is the last day of the year, and
/// split time into 400-year "eras" of exactly 146097 days each.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the origin from 1970-01-01 to 0000-03-01, the start of an era.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097; // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11], 0 = March
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // [1, 31]
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    // January and February belong to the next calendar year.
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// The inverse, Hinnant's `days_from_civil`, used only to cross-check `civil_from_days`.
    fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
        let year = if month <= 2 { year - 1 } else { year };
        let era = year / 400;
        let year_of_era = year - era * 400;
        let month_from_march = (month + 9) % 12;
        let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    #[test]
    fn epoch() {
        assert_eq!(rfc5322(at(0)), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(asctime(at(0)), "Thu Jan  1 00:00:00 1970");
        assert_eq!(sortable(at(0)), "19700101-000000");
        assert_eq!(sortable(at(1_795_756_012)), "20261127-050652");
    }

    #[test]
    fn before_the_epoch_is_clamped() {
        let past = UNIX_EPOCH - Duration::from_secs(86_400 * 365);
        assert_eq!(asctime(past), "Thu Jan  1 00:00:00 1970");
    }

    #[test]
    fn leap_day_2000() {
        // 2000 is a leap year although divisible by 100, because it is divisible by 400.
        assert_eq!(rfc5322(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(asctime(at(951_782_400)), "Tue Feb 29 00:00:00 2000");
        assert_eq!(
            asctime(at(951_782_400 + 86_400)),
            "Wed Mar  1 00:00:00 2000"
        );
    }

    #[test]
    fn the_example_in_the_header() {
        assert_eq!(
            rfc5322(at(1_795_756_012)),
            "Fri, 27 Nov 2026 05:06:52 +0000"
        );
        assert_eq!(asctime(at(1_795_756_012)), "Fri Nov 27 05:06:52 2026");
    }

    #[test]
    fn known_timestamps() {
        // Each checked against GNU `date -u -d @SECONDS`.
        let cases = [
            (1_798_347_612, "Sun, 27 Dec 2026 05:00:12 +0000"),
            (946_684_799, "Fri, 31 Dec 1999 23:59:59 +0000"),
            (1_609_459_199, "Thu, 31 Dec 2020 23:59:59 +0000"), // leap year, day 366
            (68_256_000, "Wed, 01 Mar 1972 00:00:00 +0000"),
            (4_102_444_800, "Fri, 01 Jan 2100 00:00:00 +0000"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(rfc5322(at(seconds)), expected, "{seconds}");
        }
    }

    #[test]
    fn asctime_pads_the_day_with_a_space() {
        let text = asctime(at(820_631_134));
        assert_eq!(text, "Wed Jan  3 01:05:34 1996");
        assert_eq!(text.len(), 24);
    }

    #[test]
    fn civil_from_days_inverts_days_from_civil() {
        // Every day from 1970 to past 2400, through the leap rules for 2000, 2100 and 2400.
        let mut previous = (1969, 12, 31);
        for days in 0..157_000 {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
            assert!((year, month, day) > previous, "days must increase");
            assert!((1..=12).contains(&month) && (1..=31).contains(&day));
            previous = (year, month, day);
        }
    }
}

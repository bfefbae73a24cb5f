//! When retraining runs: an interval ("6h", "1h30m") or a 5-field cron expression.
//!
//! Cron fields are minute (0-59), hour (0-23), day of month (1-31), month (1-12) and day of
//! week (0-7, 0 and 7 both Sunday), each `*`, a number, a range `a-b`, a step `*/n` or
//! `a-b/n`, or a comma-separated list of those. As in classic cron, when both day fields are
//! restricted a day matching either one matches. Times are UTC (no time-zone database is
//! needed). `@hourly`, `@daily` (`@midnight`) and `@weekly` are shorthands.

use std::time::Duration;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Cron(Cron),
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        let expanded = match t {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            _ => t,
        };
        if expanded.split_whitespace().count() > 1 {
            return Cron::parse(expanded).map(Schedule::Cron);
        }
        parse_interval(t).map(Schedule::Every)
    }

    /// The first time (Unix seconds) a run is due after `previous` (the start of the previous
    /// run, or of the daemon), no earlier than `now`'s next opportunity for cron.
    pub fn next_after(&self, previous: f64, now: f64) -> f64 {
        match self {
            Schedule::Every(d) => previous + d.as_secs_f64(),
            Schedule::Cron(c) => c
                .next_after(previous.max(now).floor() as i64)
                .map(|t| t as f64)
                .unwrap_or(f64::INFINITY),
        }
    }
}

/// "90s", "30m", "6h", "1d", "2w", "1h30m", or a plain number of seconds.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty schedule".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return positive(Duration::from_secs(secs), t);
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for ch in t.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => {
                return Err(format!(
                    "{t:?}: not an interval (like 90s, 30m, 6h, 1d, 1h30m) or a 5-field cron expression"
                ))
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{t:?}: a number must come before {ch:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("{t:?}: too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{t:?}: {digits} needs a unit (s, m, h, d or w)"));
    }
    positive(Duration::from_secs(total), t)
}

fn positive(d: Duration, t: &str) -> Result<Duration, String> {
    if d.is_zero() {
        return Err(format!("{t:?}: the interval must be longer than zero"));
    }
    Ok(d)
}

/// A 5-field cron expression as sets of allowed values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{text:?}: a cron expression has 5 fields (minute hour day month weekday), not {}",
                fields.len()
            ));
        }
        let set = |i: usize, lo: u32, hi: u32, name: &str| {
            field(fields[i], lo, hi).map_err(|e| format!("{text:?}: {name} field: {e}"))
        };
        let minutes = set(0, 0, 59, "minute")?;
        let hours = set(1, 0, 23, "hour")?;
        let days = set(2, 1, 31, "day-of-month")?;
        let months = set(3, 1, 12, "month")?;
        let mut weekdays = set(4, 0, 7, "day-of-week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: (weekdays & 0x7f) as u8,
            days_restricted: fields[2] != "*",
            weekdays_restricted: fields[4] != "*",
        })
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let d = self.days & (1 << day) != 0;
        let w = self.weekdays & (1 << weekday) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => d || w,
            _ => d && w,
        }
    }

    /// Whether the minute starting at `t` (Unix seconds, UTC) matches.
    pub fn matches(&self, t: i64) -> bool {
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let (_, month, day) = civil_from_days(days);
        let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
        self.months & (1 << month) != 0
            && self.day_matches(day, weekday)
            && self.hours & (1 << (secs / 3600)) != 0
            && self.minutes & (1 << ((secs % 3600) / 60)) != 0
    }

    /// The first matching minute strictly after `t`, within about five years (an expression
    /// such as "0 0 30 2 *" never matches).
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let mut minute = t.div_euclid(60) * 60 + 60;
        let limit = minute + 5 * 366 * 86_400;
        while minute < limit {
            let days = minute.div_euclid(86_400);
            let (_, month, day) = civil_from_days(days);
            let weekday = (days + 4).rem_euclid(7) as u32;
            if self.months & (1 << month) == 0 || !self.day_matches(day, weekday) {
                minute = (days + 1) * 86_400;
                continue;
            }
            let secs = minute - days * 86_400;
            for h in (secs / 3600)..24 {
                if self.hours & (1 << h) == 0 {
                    continue;
                }
                let first = if h == secs / 3600 {
                    (secs % 3600) / 60
                } else {
                    0
                };
                if let Some(m) = (first..60).find(|m| self.minutes & (1 << m) != 0) {
                    return Some(days * 86_400 + h * 3600 + m * 60);
                }
            }
            minute = (days + 1) * 86_400;
        }
        None
    }
}

/// One cron field as a bit set over `lo..=hi`.
fn field(text: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("bad step {s:?}"))?;
                if step == 0 {
                    return Err("a step must be at least 1".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a, lo, hi)?, number(b, lo, hi)?)
        } else {
            let a = number(range, lo, hi)?;
            // "5/15" means from 5 to the end, every 15.
            (a, if step > 1 { hi } else { a })
        };
        if a > b {
            return Err(format!("range {range:?} runs backwards"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn number(text: &str, lo: u32, hi: u32) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if n < lo || n > hi {
        return Err(format!("{n} is outside {lo}-{hi}"));
    }
    Ok(n)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date and time (the inverse of `civil_from_days`).
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (mo as i64 + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + h * 3600 + mi * 60
    }

    #[test]
    fn intervals() {
        let s = |t: &str| parse_interval(t).map(|d| d.as_secs());
        assert_eq!(s("90s"), Ok(90));
        assert_eq!(s("1m"), Ok(60));
        assert_eq!(s("6h"), Ok(21_600));
        assert_eq!(s("1d"), Ok(86_400));
        assert_eq!(s("1h30m"), Ok(5_400));
        assert_eq!(s("2w"), Ok(1_209_600));
        assert_eq!(s("45"), Ok(45));
        for bad in ["", "0", "0s", "5x", "h", "1h30", "-1m"] {
            assert!(parse_interval(bad).is_err(), "{bad:?} was accepted");
        }
        let every = Schedule::parse("1m").unwrap();
        assert_eq!(every, Schedule::Every(Duration::from_secs(60)));
        assert_eq!(every.next_after(1000.0, 1000.0), 1060.0);
    }

    #[test]
    fn calendar_conversion() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(at(2024, 3, 1, 0, 0), 1_709_251_200);
    }

    #[test]
    fn cron_fields_and_matching() {
        let c = Cron::parse("*/15 9-17 * * 1-5").unwrap();
        // Monday 2024-01-01 09:15 matches; 09:16 does not; Saturday does not.
        assert!(c.matches(at(2024, 1, 1, 9, 15)));
        assert!(!c.matches(at(2024, 1, 1, 9, 16)));
        assert!(!c.matches(at(2024, 1, 6, 9, 15)));
        assert!(!c.matches(at(2024, 1, 1, 18, 0)));
        // Lists, a range with a step, Sunday as 7.
        let c = Cron::parse("0,30 1-5/2 * * 7").unwrap();
        assert!(c.matches(at(2024, 1, 7, 3, 30)));
        assert!(!c.matches(at(2024, 1, 7, 2, 30)));
        // Both day fields restricted: either matches (the 13th, or any Friday).
        let c = Cron::parse("0 0 13 * 5").unwrap();
        assert!(c.matches(at(2024, 2, 13, 0, 0))); // a Tuesday
        assert!(c.matches(at(2024, 2, 2, 0, 0))); // a Friday
        assert!(!c.matches(at(2024, 2, 3, 0, 0)));
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn cron_next_times() {
        let daily = Schedule::parse("0 3 * * *").unwrap();
        let t = at(2024, 1, 1, 2, 59) as f64 + 30.0;
        assert_eq!(daily.next_after(t, t), at(2024, 1, 1, 3, 0) as f64);
        // Strictly after: at 03:00 exactly the next is tomorrow.
        let t = at(2024, 1, 1, 3, 0) as f64;
        assert_eq!(daily.next_after(t, t), at(2024, 1, 2, 3, 0) as f64);
        // Every minute.
        let c = Cron::parse("* * * * *").unwrap();
        assert_eq!(c.next_after(125), Some(180));
        // Leap day only.
        let c = Cron::parse("30 12 29 2 *").unwrap();
        assert_eq!(
            c.next_after(at(2024, 3, 1, 0, 0)),
            Some(at(2028, 2, 29, 12, 30))
        );
        // Never.
        assert_eq!(Cron::parse("0 0 30 2 *").unwrap().next_after(0), None);
        assert_eq!(
            Schedule::parse("@hourly").unwrap().next_after(10.0, 10.0),
            3600.0
        );
        assert!(Schedule::parse("@yearly").is_err());
    }
}

//! Time helpers: RFC 3339 timestamps and the HTTP `Date` header (IMF-fixdate).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as an RFC 3339 UTC string with second precision (`2024-05-01T12:00:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    rfc3339_secs(secs)
}

/// RFC 3339 UTC with second precision for unix seconds `t` (`2024-05-01T12:00:00Z`): the
/// one formatter of the workspace (the agent, the release manifest and the hub use it).
pub fn rfc3339_unix(t: u64) -> String {
    rfc3339_secs(i64::try_from(t).unwrap_or(i64::MAX))
}

/// [`rfc3339_unix`] for signed unix seconds; out-of-range times (past 9999) give the epoch rather
/// than a panic.
pub fn rfc3339_secs(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Parse an HTTP date in IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7),
/// the only form a current server sends. Anything else is `None`.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut it = s.split_ascii_whitespace();
    let _weekday = it.next()?.strip_suffix(',')?;
    let day: u8 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => time::Month::January,
        "Feb" => time::Month::February,
        "Mar" => time::Month::March,
        "Apr" => time::Month::April,
        "May" => time::Month::May,
        "Jun" => time::Month::June,
        "Jul" => time::Month::July,
        "Aug" => time::Month::August,
        "Sep" => time::Month::September,
        "Oct" => time::Month::October,
        "Nov" => time::Month::November,
        "Dec" => time::Month::December,
        _ => return None,
    };
    let year: i32 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<u8>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || it.next().is_some() || hms.next().is_some() {
        return None;
    }
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let t = time::Time::from_hms(h, m, sec).ok()?;
    let ts = date.with_time(t).assume_utc().unix_timestamp();
    u64::try_from(ts)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Signed seconds `remote - local` (positive: the hub's clock is ahead).
pub fn skew_secs(local: SystemTime, remote: SystemTime) -> i64 {
    match remote.duration_since(local) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        let cases: &[(&str, Option<u64>)] = &[
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(784111777)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            ("Wed, 29 Feb 2024 23:59:59 GMT", Some(1709251199)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", None),
            ("Sun Nov  6 08:49:37 1994", None),
            ("Sun, 06 Nov 1994 08:49:37 UTC", None),
            ("Sun, 31 Feb 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 25:49:37 GMT", None),
            ("", None),
        ];
        for (s, want) in cases {
            let got = parse_http_date(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
            assert_eq!(got, *want, "{s}");
        }
    }

    #[test]
    fn rfc3339_and_skew() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(784111777)),
            "1994-11-06T08:49:37Z"
        );
        let a = UNIX_EPOCH + Duration::from_secs(100);
        let b = UNIX_EPOCH + Duration::from_secs(175);
        assert_eq!(skew_secs(a, b), 75);
        assert_eq!(skew_secs(b, a), -75);
    }
}

//! What IMDS answers on the paths the agent reads, and how its formats are checked: pure.

use serde::Deserialize;

/// `{"noticeTime": "2020-10-27T08:22:00Z"}` on the rebalance path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RebalanceRecommendation {
    #[serde(rename = "noticeTime")]
    pub notice_time: String,
}

/// `{"action": "terminate", "time": "2017-09-18T08:22:00Z"}` on the spot instance-action path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceAction {
    pub action: String,
    pub time: String,
}

/// One entry of the scheduled maintenance list; times are as IMDS writes them,
/// e.g. "21 Jan 2019 09:00:43 GMT" (see [`parse_scheduled_event_time`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ScheduledEvent {
    #[serde(rename = "Code", default)]
    pub code: String,
    #[serde(rename = "Description", default)]
    pub description: String,
    #[serde(rename = "EventId", default)]
    pub event_id: String,
    #[serde(rename = "State", default)]
    pub state: String,
    #[serde(rename = "NotBefore", default)]
    pub not_before: String,
    #[serde(rename = "NotAfter", default)]
    pub not_after: String,
    #[serde(rename = "NotBeforeDeadline", default)]
    pub not_before_deadline: String,
}

/// Parses IMDS's scheduled event time format (Go layout "2 Jan 2006 15:04:05 GMT", as NTH)
/// into seconds since the Unix epoch.
pub fn parse_scheduled_event_time(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut fields = text.split_whitespace();
    let day: i64 = fields.next()?.parse().ok()?;
    let month_name = fields.next()?;
    let month = i64::try_from(MONTHS.iter().position(|m| *m == month_name)? + 1).ok()?;
    let year: i64 = fields.next()?.parse().ok()?;
    let mut clock = fields.next()?.split(':');
    let hour: i64 = clock.next()?.parse().ok()?;
    let minute: i64 = clock.next()?.parse().ok()?;
    let second: i64 = clock.next()?.parse().ok()?;
    if fields.next()? != "GMT" || fields.next().is_some() || clock.next().is_some() {
        return None;
    }
    let valid = (1..=days_in_month(year, month)).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..60).contains(&second);
    valid.then(|| days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// EC2's instance id shape: `i-` and 8 (older) or 17 lowercase hex digits.
pub fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_event_time_in_imds_format_is_parsed() {
        assert_eq!(
            parse_scheduled_event_time("21 Jan 2019 09:00:43 GMT"),
            Some(1_548_061_243)
        );
        assert_eq!(
            parse_scheduled_event_time("1 Mar 2024 00:00:00 GMT"),
            Some(1_709_251_200)
        );
        assert_eq!(parse_scheduled_event_time("2019-01-21T09:00:43Z"), None);
        assert_eq!(parse_scheduled_event_time("30 Feb 2019 09:00:43 GMT"), None);
        assert_eq!(parse_scheduled_event_time("21 Jan 2019 09:00:43"), None);
    }
}

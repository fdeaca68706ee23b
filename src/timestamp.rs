//! Timestamps on the wire: RFC 3339 in UTC with exactly six fractional digits
//! (`2026-11-22T08:10:30.598938Z`), so that clients can compare them as strings.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// [`serialize`] for a time that may be absent (`null`).
pub fn serialize_optional<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    #[test]
    fn whole_seconds_still_carry_six_digits() {
        let at = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let json = serde_json::to_string(&Wrapper(at)).unwrap();
        assert_eq!(json, "\"2026-01-02T03:04:05.000000Z\"");
    }

    #[derive(serde::Serialize)]
    struct Wrapper(#[serde(serialize_with = "super::serialize")] chrono::DateTime<chrono::Utc>);
}

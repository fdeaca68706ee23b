//! Keyset cursors of `GET /v1/channels`: where the next page starts, and in which order.
//!
//! A cursor is opaque to clients: base64url of `{"s": sort, "o": "asc"|"desc", "k": sort key of
//! the last row, "i": its id}`. A page that starts from it holds the rows strictly after that
//! (key, id) in that order, so rows whose sort key did not change are never repeated or skipped,
//! however the rows around them move.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{
    db::{After, Sort},
    model::ChannelSummary,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub sort: Sort,
    pub descending: bool,
    pub after: After,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    s: String,
    o: String,
    k: String,
    i: i64,
}

impl Cursor {
    /// The cursor that continues after `last`, listed by `sort` in that direction.
    pub fn after(last: &ChannelSummary, sort: Sort, descending: bool) -> Self {
        let after = match sort {
            Sort::UpdatedAt => After::Time(last.updated_at, last.id),
            Sort::CreatedAt => After::Time(last.created_at, last.id),
            Sort::Name => After::Name(last.name.clone(), last.id),
        };
        Self {
            sort,
            descending,
            after,
        }
    }

    pub fn encode(&self) -> String {
        let (k, i) = match &self.after {
            After::Time(at, id) => (at.to_rfc3339_opts(SecondsFormat::Micros, true), *id),
            After::Name(name, id) => (name.clone(), *id),
        };
        let wire = Wire {
            s: self.sort.as_str().to_owned(),
            o: if self.descending { "desc" } else { "asc" }.to_owned(),
            k,
            i,
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).expect("a cursor serializes"))
    }

    /// `None` for anything this server did not hand out.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let wire: Wire = serde_json::from_slice(&bytes).ok()?;
        // Names are at most 100 characters without control characters; times are short.
        if wire.k.chars().count() > 100 || wire.k.chars().any(char::is_control) {
            return None;
        }
        let sort = Sort::parse(&wire.s)?;
        let descending = match wire.o.as_str() {
            "desc" => true,
            "asc" => false,
            _ => return None,
        };
        let after = match sort {
            Sort::UpdatedAt | Sort::CreatedAt => After::Time(
                DateTime::parse_from_rfc3339(&wire.k)
                    .ok()?
                    .with_timezone(&Utc),
                wire.i,
            ),
            Sort::Name => After::Name(wire.k, wire.i),
        };
        Some(Self {
            sort,
            descending,
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let at = DateTime::parse_from_rfc3339("2026-11-28T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        for cursor in [
            Cursor {
                sort: Sort::UpdatedAt,
                descending: true,
                after: After::Time(at, 7),
            },
            Cursor {
                sort: Sort::Name,
                descending: false,
                after: After::Name("Ünïcode % name".into(), 9),
            },
        ] {
            assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        }
        let nul = URL_SAFE_NO_PAD.encode(r#"{"s":"name","o":"asc","k":"a\u0000b","i":1}"#);
        let long = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"s":"name","o":"asc","k":"{}","i":1}}"#,
            "x".repeat(101)
        ));
        for raw in ["", "abc", "eyJzIjoiaWQifQ", "!!!", &nul, &long] {
            assert_eq!(Cursor::decode(raw), None, "{raw}");
        }
    }
}

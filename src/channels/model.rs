//! Channel shapes on the wire and their validation rules.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use validator::{Validate, ValidationError};

use crate::messages::model::no_null_character;

/// A channel as listed: every field but the (possibly large) `document`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChannelSummary {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub repository_id: Option<i64>,
    pub ticket_slug: Option<String>,
    pub archived: bool,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    /// Messages stored in the channel.
    pub message_count: i64,
    /// The newest message, `null` while there is none.
    pub last_message: Option<LastMessage>,
    /// With `?reader=`: the messages after the reader's `last_read_id` (all of them while the
    /// reader has recorded none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_count: Option<i64>,
    /// With `?reader=`: those of the unread messages whose `mentions` hold the reader's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_mentions: Option<i64>,
}

/// `PUT /v1/channels/{id}/read`, and its answer: how far `reader` has read.
#[derive(Debug, Clone, Deserialize, Serialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadState {
    /// Who read: a person or a pod, 1-100 printable ASCII characters.
    #[validate(custom(function = "valid_reader"))]
    #[schema(pattern = "^[ -~]{1,100}$")]
    pub reader: String,
    /// The id of the newest message read. Moves forward only; beyond the channel's newest
    /// message it counts as that one.
    #[validate(range(min = 0, message = "last_read_id must be a message id (0 or more)"))]
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "crate::json::required_integer")]
    pub last_read_id: i64,
}

fn valid_reader(reader: &str) -> Result<(), ValidationError> {
    if crate::messages::model::is_printable_ascii(reader, 100) {
        Ok(())
    } else {
        Err(ValidationError::new("format")
            .with_message("reader must be 1-100 printable ASCII characters".into()))
    }
}

/// The newest message of a channel, as a dashboard shows it beside the channel.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastMessage {
    pub id: i64,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// `api` or `agent`.
    pub sender_type: String,
    pub pod_key: Option<String>,
    /// The first 200 characters of the message's content.
    pub content: String,
}

/// The maximum length, in characters, of `last_message.content`.
pub const LAST_MESSAGE_PREVIEW_CHARS: usize = 200;

/// A channel as read one at a time, `document` included.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Channel {
    #[serde(flatten)]
    pub summary: ChannelSummary,
    pub document: Option<String>,
}

pub const DOCUMENT_MAX_BYTES: usize = 512 * 1024;

/// `POST /v1/channels`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    /// 2-100 characters after trimming, no control characters; unique among active channels.
    /// The schema states no maxLength: surrounding white space does not count, so a longer raw
    /// string can be valid. The pattern states the whole rule: optional white space, then 2-100
    /// characters that begin and end with neither white space nor a control character.
    #[validate(custom(function = "valid_name"))]
    #[schema(
        min_length = 2,
        pattern = r"^[\t\n\v\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F]{0,98}[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][\t\n\v\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*$"
    )]
    pub name: String,
    #[validate(
        length(max = 1000, message = "description must be at most 1000 characters"),
        custom(function = "valid_description")
    )]
    #[schema(max_length = 1000, pattern = r"^[^\u0000]*$")]
    pub description: Option<String>,
    #[validate(range(min = 1, message = "repository_id must be a positive integer"))]
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::json::integer")]
    pub repository_id: Option<i64>,
    #[validate(custom(function = "valid_ticket_slug"))]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub ticket_slug: Option<String>,
    #[validate(custom(function = "valid_document"))]
    #[schema(pattern = r"^[^\u0000]*$")]
    pub document: Option<String>,
}

/// `PUT /v1/channels/{id}`: absent fields stay as they are; a present `null` clears a nullable one.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannel {
    #[serde(default, deserialize_with = "present_non_null")]
    /// 2-100 characters after trimming, no control characters.
    #[validate(custom(function = "valid_name"))]
    #[schema(
        min_length = 2,
        nullable = false,
        pattern = r"^[\t\n\v\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F]{0,98}[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][\t\n\v\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*$"
    )]
    pub name: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[validate(
        length(max = 1000, message = "description must be at most 1000 characters"),
        custom(function = "valid_description")
    )]
    #[schema(max_length = 1000, pattern = r"^[^\u0000]*$")]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[validate(custom(function = "valid_document"))]
    #[schema(pattern = r"^[^\u0000]*$")]
    pub document: Option<Option<String>>,
    /// `true` archives, `false` unarchives.
    #[serde(default, deserialize_with = "present_non_null")]
    #[schema(nullable = false)]
    pub archived: Option<bool>,
}

impl UpdateChannel {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.document.is_none()
            && self.archived.is_none()
    }

    /// Whether a field besides `archived` is given.
    pub fn changes_more_than_archived(&self) -> bool {
        self.name.is_some() || self.description.is_some() || self.document.is_some()
    }
}

/// Distinguishes a present `null` (`Some(None)`) from an absent field (`None`, via `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A field that may be absent but, when present, must not be `null`.
fn present_non_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Trims surrounding white space from a channel name; validation and storage use the trimmed form.
pub fn normalize_name(name: &str) -> String {
    name.trim().to_owned()
}

fn valid_name(name: &str) -> Result<(), ValidationError> {
    let trimmed = name.trim();
    let length = trimmed.chars().count();
    if !(2..=100).contains(&length) {
        return Err(
            ValidationError::new("length").with_message("name must be 2-100 characters".into())
        );
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ValidationError::new("control_characters")
            .with_message("name must not contain control characters".into()));
    }
    Ok(())
}

pub fn is_ticket_slug(slug: &str) -> bool {
    (1..=64).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_ticket_slug(slug: &str) -> Result<(), ValidationError> {
    if is_ticket_slug(slug) {
        Ok(())
    } else {
        Err(ValidationError::new("format")
            .with_message("ticket_slug must be 1-64 characters of A-Z a-z 0-9 . _ -".into()))
    }
}

fn valid_description(description: &str) -> Result<(), ValidationError> {
    no_null_character(description, "description")
}

fn valid_document(document: &str) -> Result<(), ValidationError> {
    if document.len() <= DOCUMENT_MAX_BYTES {
        no_null_character(document, "document")
    } else {
        Err(ValidationError::new("length").with_message("document must be at most 512 KiB".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(result: Result<(), validator::ValidationErrors>) -> Vec<(String, String)> {
        let Err(errors) = result else { return vec![] };
        let mut out: Vec<(String, String)> = errors
            .field_errors()
            .into_iter()
            .flat_map(|(f, list)| {
                list.iter()
                    .map(move |e| (f.to_string(), e.code.to_string()))
            })
            .collect();
        out.sort();
        out
    }

    fn create(json: serde_json::Value) -> CreateChannel {
        serde_json::from_value(json).expect("deserializes")
    }

    #[test]
    fn create_rules_reject_each_bad_field() {
        let long = "x".repeat(101);
        let big = "d".repeat(DOCUMENT_MAX_BYTES + 1);
        let cases = [
            (serde_json::json!({"name": "a"}), "name", "length"),
            (serde_json::json!({"name": "  a  "}), "name", "length"),
            (serde_json::json!({"name": long}), "name", "length"),
            (
                serde_json::json!({"name": "ab\u{7}c"}),
                "name",
                "control_characters",
            ),
            (
                serde_json::json!({"name": "ok", "description": "x".repeat(1001)}),
                "description",
                "length",
            ),
            (
                serde_json::json!({"name": "ok", "repository_id": 0}),
                "repository_id",
                "range",
            ),
            (
                serde_json::json!({"name": "ok", "ticket_slug": "AM 123"}),
                "ticket_slug",
                "format",
            ),
            (
                serde_json::json!({"name": "ok", "ticket_slug": ""}),
                "ticket_slug",
                "format",
            ),
            (
                serde_json::json!({"name": "ok", "document": big}),
                "document",
                "length",
            ),
        ];
        for (json, field, code) in cases {
            let label = format!("{field}/{code}");
            assert_eq!(
                codes(create(json).validate()),
                vec![(field.to_owned(), code.to_owned())],
                "{label}"
            );
        }
    }

    #[test]
    fn create_accepts_boundary_values() {
        let ok = create(serde_json::json!({
            "name": "é".repeat(100),
            "description": "x".repeat(1000),
            "repository_id": 1,
            "ticket_slug": "AM-123.v2_x",
            "document": "d".repeat(DOCUMENT_MAX_BYTES),
        }));
        assert_eq!(codes(ok.validate()), vec![]);
        // White space around the name does not count towards its 100 characters.
        let padded = create(serde_json::json!({"name": format!("\u{c} {}\t", "é".repeat(100))}));
        assert_eq!(codes(padded.validate()), vec![]);
    }

    #[test]
    fn update_tells_absent_from_null() {
        let update: UpdateChannel =
            serde_json::from_value(serde_json::json!({"description": null})).expect("deserializes");
        assert_eq!(update.description, Some(None));
        assert_eq!(update.document, None);
        assert!(
            serde_json::from_value::<UpdateChannel>(serde_json::json!({"name": null})).is_err()
        );
        assert!(
            serde_json::from_value::<UpdateChannel>(serde_json::json!({"archived": null})).is_err()
        );
    }
}

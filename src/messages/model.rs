//! Message shapes on the wire and their validation rules.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use validator::{Validate, ValidationError};

/// A stored message, exactly as REST returns it and live delivery carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Message {
    pub id: i64,
    pub channel_id: i64,
    pub content: String,
    pub sender_type: String,
    pub pod_key: Option<String>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// The names it addresses (pod keys or peer ids), in the order given; `[]` when none.
    pub mentions: Vec<String>,
    /// A JSON object the poster attached, or `null`.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The earlier message of the same channel it answers, or `null`.
    pub reply_to: Option<i64>,
    /// The id of its thread's first message: its own id when it replies to nothing.
    pub thread_id: i64,
}

#[cfg(test)]
impl Message {
    /// A plain message `id` of channel `channel_id` (`m<id>`, from the API, no addressing), for
    /// unit tests.
    pub(crate) fn sample(channel_id: i64, id: i64) -> Self {
        Self {
            id,
            channel_id,
            content: format!("m{id}"),
            sender_type: "api".into(),
            pod_key: None,
            created_at: Utc::now(),
            mentions: Vec::new(),
            metadata: None,
            reply_to: None,
            thread_id: id,
        }
    }
}

pub const CONTENT_MAX_BYTES: usize = 65_536;
/// Most names one message may mention.
pub const MENTIONS_MAX: usize = 32;
/// Largest `metadata`, encoded as JSON.
pub const METADATA_MAX_BYTES: usize = 16 * 1024;

/// `POST /v1/channels/{id}/messages`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMessage {
    /// 1-65,536 bytes.
    #[validate(custom(function = "valid_content"))]
    #[schema(min_length = 1)]
    pub content: String,
    /// 1-100 printable ASCII characters; makes the sender an `agent`.
    #[validate(custom(function = "valid_pod_key"))]
    #[schema(pattern = "^[ -~]{1,100}$")]
    pub pod_key: Option<String>,
    /// Names addressed: up to 32 distinct ones, each 1-100 printable ASCII characters.
    #[validate(custom(function = "valid_mentions"))]
    #[schema(max_items = 32, inline, value_type = Option<Vec<MentionName>>)]
    pub mentions: Option<Vec<String>>,
    /// A JSON object of at most 16 KiB encoded, e.g. `{"kind": "status", "progress": 0.4}`.
    #[validate(custom(function = "valid_metadata"))]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// The id of an earlier message of the same channel that this one answers.
    #[validate(range(min = 1, message = "reply_to must be a message id (at least 1)"))]
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::json::integer")]
    pub reply_to: Option<i64>,
}

/// A name a message addresses (the document's statement of the rule `valid_mentions` checks).
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[ -~]{1,100}$")]
#[allow(dead_code)]
struct MentionName(String);

impl CreateMessage {
    /// Content alone, as most posts are.
    pub fn plain(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            pod_key: None,
            mentions: None,
            metadata: None,
            reply_to: None,
        }
    }

    /// `agent` when the poster names its pod, `api` otherwise.
    pub fn sender_type(&self) -> &'static str {
        if self.pod_key.is_some() {
            "agent"
        } else {
            "api"
        }
    }
}

fn valid_content(content: &str) -> Result<(), ValidationError> {
    if !(1..=CONTENT_MAX_BYTES).contains(&content.len()) {
        return Err(
            ValidationError::new("length").with_message("content must be 1-65536 bytes".into())
        );
    }
    no_null_character(content, "content")
}

/// PostgreSQL text cannot hold U+0000, so stored text refuses it up front (400, not a 500).
pub fn no_null_character(text: &str, field: &str) -> Result<(), ValidationError> {
    if text.contains('\0') {
        Err(ValidationError::new("null_character")
            .with_message(format!("{field} must not contain U+0000").into()))
    } else {
        Ok(())
    }
}

/// Printable ASCII: what `pod_key` and `Idempotency-Key` may hold.
pub fn is_printable_ascii(value: &str, max: usize) -> bool {
    (1..=max).contains(&value.len()) && value.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn valid_mentions(mentions: &[String]) -> Result<(), ValidationError> {
    if mentions.len() > MENTIONS_MAX {
        return Err(ValidationError::new("length")
            .with_message(format!("mentions holds at most {MENTIONS_MAX} names").into()));
    }
    if !mentions.iter().all(|name| is_printable_ascii(name, 100)) {
        return Err(ValidationError::new("format").with_message(
            "each name in mentions must be 1-100 printable ASCII characters".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = mentions.iter().find(|name| !seen.insert(name.as_str())) {
        return Err(ValidationError::new("duplicate")
            .with_message(format!("mentions names `{twice}` twice; each name once").into()));
    }
    Ok(())
}

/// Whether a key or string anywhere in `value` holds U+0000, which PostgreSQL's jsonb refuses.
fn holds_null_character(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_null_character),
        Value::Object(map) => map
            .iter()
            .any(|(key, value)| key.contains('\0') || holds_null_character(value)),
        _ => false,
    }
}

/// Whether a number in `value` is too large to read back once PostgreSQL has written it out in
/// full decimal digits.
fn holds_huge_number(value: &Value) -> bool {
    match value {
        Value::Number(number) => number.as_f64().is_none_or(|n| n.abs() >= 1e300),
        Value::Array(items) => items.iter().any(holds_huge_number),
        Value::Object(map) => map.values().any(holds_huge_number),
        _ => false,
    }
}

fn valid_metadata(metadata: &Map<String, Value>) -> Result<(), ValidationError> {
    if metadata
        .iter()
        .any(|(key, value)| key.contains('\0') || holds_null_character(value))
    {
        return Err(ValidationError::new("null_character")
            .with_message("metadata must not contain U+0000".into()));
    }
    if holds_huge_number(&Value::Object(metadata.clone())) {
        return Err(ValidationError::new("range").with_message(
            "metadata numbers must lie within ±1e300 (PostgreSQL writes them out in full)".into(),
        ));
    }
    let bytes = serde_json::to_vec(metadata).map_or(usize::MAX, |encoded| encoded.len());
    if bytes > METADATA_MAX_BYTES {
        return Err(ValidationError::new("length").with_message(
            format!("metadata must be at most {METADATA_MAX_BYTES} bytes encoded (got {bytes})")
                .into(),
        ));
    }
    Ok(())
}

fn valid_pod_key(pod_key: &str) -> Result<(), ValidationError> {
    if is_printable_ascii(pod_key, 100) {
        Ok(())
    } else {
        Err(ValidationError::new("format")
            .with_message("pod_key must be 1-100 printable ASCII characters".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_and_pod_key_limits() {
        let make = |content: String, pod_key: Option<&str>| CreateMessage {
            content,
            pod_key: pod_key.map(str::to_owned),
            ..CreateMessage::plain("")
        };
        assert!(make("x".into(), None).validate().is_ok());
        assert!(
            make("x".repeat(CONTENT_MAX_BYTES), Some(&"p".repeat(100)))
                .validate()
                .is_ok()
        );
        let bad = [
            (make(String::new(), None), "content"),
            (make("x".repeat(CONTENT_MAX_BYTES + 1), None), "content"),
            (make("x".into(), Some("")), "pod_key"),
            (make("x".into(), Some(&"p".repeat(101))), "pod_key"),
            (make("x".into(), Some("pod\tkey")), "pod_key"),
            (make("x".into(), Some("pød")), "pod_key"),
            (make("nul\0byte".into(), None), "content"),
        ];
        for (message, field) in bad {
            let errors = message.validate().expect_err(field);
            assert!(
                errors.field_errors().contains_key(field),
                "{field}: {errors:?}"
            );
        }
    }

    #[test]
    fn sender_type_follows_pod_key() {
        let api = CreateMessage::plain("x");
        let agent = CreateMessage {
            pod_key: Some("pod-1".into()),
            ..CreateMessage::plain("x")
        };
        assert_eq!(api.sender_type(), "api");
        assert_eq!(agent.sender_type(), "agent");
    }
}

//! Message shapes on the wire and their validation rules.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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
}

pub const CONTENT_MAX_BYTES: usize = 65_536;

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
}

impl CreateMessage {
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
        let api = CreateMessage {
            content: "x".into(),
            pod_key: None,
        };
        let agent = CreateMessage {
            content: "x".into(),
            pod_key: Some("pod-1".into()),
        };
        assert_eq!(api.sender_type(), "api");
        assert_eq!(agent.sender_type(), "agent");
    }
}

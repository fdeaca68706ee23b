//! Webhook shapes on the wire (SPEC §9).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;

use crate::auth::routes::ChannelPattern;

/// Every event type a webhook can ask for.
pub const EVENT_TYPES: [&str; 8] = [
    "message.created",
    "channel.created",
    "channel.updated",
    "channel.archived",
    "channel.unarchived",
    "presence.joined",
    "presence.left",
    "consumer.dead",
];

/// A webhook as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Webhook {
    /// `wh_` and 32 hexadecimal digits.
    pub id: String,
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// Channel patterns (`*`, `**`): only events of channels they match are sent.
    pub channels: Vec<String>,
    pub description: Option<String>,
    /// `false` after the receiver answered 410 Gone, or when set so; events wait unsent.
    pub enabled: bool,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/webhooks`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `https://…` (or `http://…` with `--webhook-allow-http`), at most 2000 characters, not
    /// resolving to a loopback, private, link-local, CGNAT, multicast or metadata address.
    #[schema(
        max_length = 2000,
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?#][^\s]*)?$"
    )]
    pub url: String,
    /// 1-8 of `message.created`, `channel.created`, `channel.updated`, `channel.archived`,
    /// `channel.unarchived`, `presence.joined`, `presence.left`, `consumer.dead`.
    #[schema(min_items = 1, max_items = 8, value_type = Vec<EventName>)]
    pub events: Vec<String>,
    /// 1-32 channel patterns, each within the key's own (default: the key's patterns).
    #[schema(min_items = 1, max_items = 32, value_type = Option<Vec<ChannelPattern>>)]
    pub channels: Option<Vec<String>>,
    /// At most 500 characters, no control characters.
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: Option<String>,
}

/// `PUT /v1/webhooks/{id}`: the fields given change, the others stay.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub enabled: Option<bool>,
    #[schema(
        max_length = 2000,
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?#][^\s]*)?$"
    )]
    pub url: Option<String>,
    #[schema(min_items = 1, max_items = 8, value_type = Option<Vec<EventName>>)]
    pub events: Option<Vec<String>>,
    #[schema(min_items = 1, max_items = 32, value_type = Option<Vec<ChannelPattern>>)]
    pub channels: Option<Vec<String>>,
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: Option<String>,
}

/// An event type's name (schema only: the fields are strings, checked by the handlers).
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum EventName {
    #[schema(rename = "message.created")]
    MessageCreated,
    #[schema(rename = "channel.created")]
    ChannelCreated,
    #[schema(rename = "channel.updated")]
    ChannelUpdated,
    #[schema(rename = "channel.archived")]
    ChannelArchived,
    #[schema(rename = "channel.unarchived")]
    ChannelUnarchived,
    #[schema(rename = "presence.joined")]
    PresenceJoined,
    #[schema(rename = "presence.left")]
    PresenceLeft,
    #[schema(rename = "consumer.dead")]
    ConsumerDead,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookBody {
    pub webhook: Webhook,
}

/// `201` from `POST /v1/webhooks`: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    /// `whsec_` and the base64 of 32 random bytes: the Standard Webhooks signing key.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// `POST /v1/webhooks/{id}/rotate-secret`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new secret; the previous one keeps signing beside it for 24 hours.
    pub secret: String,
}

/// One event's delivery to one webhook.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookDelivery {
    /// The event's id: `webhook-id` on every attempt.
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The channel it concerns: a persistent channel's id, a realtime channel's name.
    pub channel: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// When the next attempt is due (`null` unless `pending`).
    #[serde(serialize_with = "crate::timestamp::serialize_optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryList {
    /// Newest first.
    pub deliveries: Vec<WebhookDelivery>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryBody {
    pub delivery: WebhookDelivery,
}

/// The wire form of an event id.
pub fn event_id(id: i64) -> String {
    format!("evt_{id}")
}

/// An event id from its wire form (`evt_` and a positive integer without leading zeros).
pub fn parse_event_id(text: &str) -> Option<i64> {
    let digits = text.strip_prefix("evt_")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

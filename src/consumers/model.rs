//! Consumer-group shapes on the wire.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        RefOr,
        schema::{ObjectBuilder, OneOfBuilder, Schema, Type},
    },
};

use validator::Validate;

use crate::messages::model::Message;

/// `POST /v1/channels/{id}/consumers`. Checked in the service, so that every bad field is named
/// at once.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConsumer {
    /// 1-64 of `a-z`, `0-9`, `_` and `-`; unique on its channel.
    #[schema(pattern = r"^[a-z0-9_-]{1,64}$")]
    pub name: String,
    /// Where the group begins: `latest` (messages posted from now on; the default), `earliest`
    /// (every message of the channel), or a message id (the messages after it).
    #[schema(value_type = Option<Start>)]
    pub start: Option<Value>,
    /// How long a member holds a claimed message before it is handed out again: 1s-12h
    /// (default `30s`), e.g. `45s`, `5m`.
    #[schema(pattern = r"^([0-9]{1,6}(ms|s|m|h|d)){1,4}$")]
    pub ack_wait: Option<String>,
    /// Deliveries a message gets before it is set aside as dead: 1-100 (default 5).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::json::integer")]
    pub max_deliveries: Option<i64>,
    /// Only messages that mention this name (1-100 printable ASCII characters).
    #[schema(pattern = r"^[ -~]{1,100}$")]
    pub mentions: Option<String>,
}

/// `start`: `"latest"`, `"earliest"` or a message id (0 or more).
pub struct Start;

impl PartialSchema for Start {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["latest", "earliest"])),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Int64,
                    )))
                    .minimum(Some(0)),
            )
            .into()
    }
}

impl ToSchema for Start {}

/// A consumer group and where its work stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct Consumer {
    pub name: String,
    pub channel_id: i64,
    /// As created: `"latest"`, `"earliest"` or a message id.
    #[schema(value_type = Start)]
    pub start: Value,
    /// E.g. `30s`.
    pub ack_wait: String,
    pub max_deliveries: i32,
    pub mentions: Option<String>,
    /// Messages waiting to be claimed: never delivered, nacked, or whose lease expired.
    pub pending: i64,
    /// Messages leased to a member right now.
    pub in_flight: i64,
    /// Messages acknowledged since the group was created.
    pub acked: i64,
    /// Messages set aside after `max_deliveries` attempts (`GET …/dead`).
    pub dead: i64,
    /// Age of the oldest pending message, or `null` when none is pending.
    pub oldest_pending_age_ms: Option<i64>,
    /// Members that claimed in the last 5 minutes, most recent first.
    pub members: Vec<Member>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    pub member: String,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub last_seen: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct ConsumerBody {
    pub consumer: Consumer,
}

#[derive(Serialize, ToSchema)]
pub struct ConsumerList {
    /// The channel's groups, by name.
    pub consumers: Vec<Consumer>,
}

/// `POST …/consumers/{name}/claim`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Who claims: 1-100 printable ASCII characters (a pod key, a worker id).
    #[schema(pattern = r"^[ -~]{1,100}$")]
    pub member: String,
    /// Most messages to take: 1-100 (default 1).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::json::integer")]
    pub max: Option<i64>,
    /// Seconds to wait for a message when none is ready: 0-30 (default 0).
    #[schema(minimum = 0, maximum = 30)]
    pub wait: Option<f64>,
}

/// A message leased to the member that claimed it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// Names this lease in `ack`, `nack` and `extend`.
    pub delivery_id: String,
    /// 1 for the first delivery of the message, then one more for each.
    pub attempt: i32,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub lease_expires_at: DateTime<Utc>,
    pub message: Message,
}

#[derive(Serialize, ToSchema)]
pub struct Deliveries {
    /// In message id order; `[]` when nothing was ready (after `wait`).
    pub deliveries: Vec<Delivery>,
}

/// `POST …/ack` and `…/extend`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryIds {
    /// 1-100 delivery ids from `claim`.
    #[schema(min_items = 1, max_items = 100, value_type = Vec<DeliveryId>)]
    pub delivery_ids: Vec<String>,
}

/// `POST …/nack`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nack {
    /// 1-100 delivery ids from `claim`.
    #[schema(min_items = 1, max_items = 100, value_type = Vec<DeliveryId>)]
    pub delivery_ids: Vec<String>,
    /// How long before they may be claimed again: 0s-12h (default at once).
    #[schema(pattern = r"^([0-9]{1,6}(ms|s|m|h|d)){1,4}$")]
    pub delay: Option<String>,
}

/// A delivery id as `claim` gives it.
#[derive(ToSchema)]
#[schema(pattern = r"^(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})$")]
#[allow(dead_code)]
pub struct DeliveryId(String);

#[derive(Serialize, ToSchema)]
pub struct Acked {
    pub acked: i64,
    /// Deliveries whose lease had expired (the message may belong to another member now): not
    /// acked.
    pub lost: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Nacked {
    pub nacked: i64,
    pub lost: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Extended {
    pub extended: i64,
    pub lost: Vec<String>,
}

/// A message set aside after `max_deliveries` attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    pub message_id: i64,
    pub attempts: i32,
    /// The member that held its last lease.
    pub last_member: String,
    pub message: Message,
}

#[derive(Serialize, ToSchema)]
pub struct DeadList {
    /// Oldest message first, at most 100 (`after` pages on).
    pub dead: Vec<DeadLetter>,
}

#[derive(Serialize, ToSchema)]
pub struct Retried {
    pub message_id: i64,
}

//! Stored messages on the wire: the frame a follower of a persistent channel receives, live
//! (from [`crate::delivery`] through the engine) or replayed after `since`.

use std::sync::Arc;

use serde_json::value::to_raw_value;

use super::{
    engine::hub::fanout::{Outbound, StoredRef},
    protocol::ServerFrame,
};
use crate::messages::model::Message;

/// The `message` frame of a stored message on its live channel `"<id>"`: `from` is the
/// `pod_key` (or `"api"`), `data` the message exactly as REST returns it, and `messageId` its id,
/// a field only the server sets.
pub fn stored_frame(message: &Message) -> Outbound {
    let data = to_raw_value(message).expect("stored messages serialize");
    let channel = message.channel_id.to_string();
    let from = message.pod_key.as_deref().unwrap_or("api");
    let frame = ServerFrame::Message {
        channel: &channel,
        from,
        data: &data,
        from_metadata: None,
        message_id: Some(message.id),
    }
    .encode();
    Outbound {
        frame,
        stored: Some(Arc::new(StoredRef {
            channel_id: message.channel_id,
            message_id: message.id,
            mentions: message.mentions.clone().into_boxed_slice(),
        })),
    }
}

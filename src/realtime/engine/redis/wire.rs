//! What travels through Redis pub/sub, and how it is read back.
//!
//! A channel's pub/sub channel carries two kinds of payload, in Redis's one order:
//! - `M`: a message, encoded once by the instance it was published on: a fixed-width header
//!   (origin instance, sending connection, length of the plain frame), then the plain frame and,
//!   when the sender had metadata, the frame carrying `fromMetadata`.
//! - `P`: a presence event, written by the Lua scripts: `P<epoch>.<version>;` followed by
//!   `+<len>:<peer><len>:<metadata>` for each peer that joined and `-<len>:<peer>` for each that
//!   left. Lengths rather than separators, because metadata is any JSON text.
//!
//! An instance's own pub/sub channel carries `D` (a direct message: `<len>:<peer>` then the
//! frame), `K` (kick: the peer id) and `E` (the instance's echo of its own heartbeat).

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::roster::{PresenceEvent, Version};
use crate::realtime::engine::hub::fanout::{ConnId, Metadata};

/// One payload of a channel's pub/sub channel.
#[derive(Debug)]
pub enum ChannelPayload {
    Message {
        origin: u64,
        sender: ConnId,
        plain: Utf8Bytes,
        with_metadata: Option<Utf8Bytes>,
    },
    Presence(PresenceEvent),
}

/// One payload of an instance's own pub/sub channel.
#[derive(Debug)]
pub enum NodePayload {
    Direct { peer: String, frame: Utf8Bytes },
    Kick { peer: String },
    Echo,
}

const HEADER: usize = 1 + 16 + 16 + 8;

pub fn encode_message(
    origin: u64,
    sender: ConnId,
    plain: &str,
    with_metadata: Option<&str>,
) -> Vec<u8> {
    let with_metadata = with_metadata.unwrap_or("");
    let mut out = Vec::with_capacity(HEADER + plain.len() + with_metadata.len());
    out.extend_from_slice(format!("M{origin:016x}{sender:016x}{:08x}", plain.len()).as_bytes());
    out.extend_from_slice(plain.as_bytes());
    out.extend_from_slice(with_metadata.as_bytes());
    out
}

pub fn encode_direct(peer: &str, frame: &str) -> Vec<u8> {
    let mut out = format!("D{}:{peer}", peer.len()).into_bytes();
    out.extend_from_slice(frame.as_bytes());
    out
}

pub fn encode_kick(peer: &str) -> Vec<u8> {
    format!("K{peer}").into_bytes()
}

pub const ECHO: &[u8] = b"E";

pub fn parse_channel_payload(payload: &[u8]) -> Option<ChannelPayload> {
    match payload.first()? {
        b'M' => {
            let header = std::str::from_utf8(payload.get(1..HEADER)?).ok()?;
            let origin = u64::from_str_radix(&header[..16], 16).ok()?;
            let sender = u64::from_str_radix(&header[16..32], 16).ok()?;
            let plain_len = usize::from_str_radix(&header[32..40], 16).ok()?;
            let bytes = Bytes::copy_from_slice(payload.get(HEADER..)?);
            let plain = Utf8Bytes::try_from(bytes.slice(..plain_len.min(bytes.len()))).ok()?;
            let rest = bytes.slice(plain_len.min(bytes.len())..);
            let with_metadata = if rest.is_empty() {
                None
            } else {
                Some(Utf8Bytes::try_from(rest).ok()?)
            };
            Some(ChannelPayload::Message {
                origin,
                sender,
                plain,
                with_metadata,
            })
        }
        b'P' => {
            parse_presence(std::str::from_utf8(&payload[1..]).ok()?).map(ChannelPayload::Presence)
        }
        _ => None,
    }
}

fn parse_presence(text: &str) -> Option<PresenceEvent> {
    let (version, mut rest) = text.split_once(';')?;
    let mut event = PresenceEvent {
        version: Version::parse(version)?,
        joined: Vec::new(),
        left: Vec::new(),
    };
    while let Some(sign) = rest.chars().next() {
        let (peer, after) = take_counted(&rest[1..])?;
        match sign {
            '+' => {
                let (metadata, after) = take_counted(after)?;
                event.joined.push((peer.into(), metadata_of(metadata)));
                rest = after;
            }
            '-' => {
                event.left.push(peer.into());
                rest = after;
            }
            _ => return None,
        }
    }
    Some(event)
}

/// `<len>:<text of len bytes>` → (text, rest).
fn take_counted(text: &str) -> Option<(&str, &str)> {
    let (len, rest) = text.split_once(':')?;
    let len: usize = len.parse().ok()?;
    if !rest.is_char_boundary(len.min(rest.len())) || rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// Metadata as the scripts store it: raw JSON, or empty for none.
pub fn metadata_of(text: &str) -> Option<Metadata> {
    if text.is_empty() {
        return None;
    }
    RawValue::from_string(text.to_owned()).ok().map(Into::into)
}

pub fn parse_node_payload(payload: &[u8]) -> Option<NodePayload> {
    let text = std::str::from_utf8(payload).ok()?;
    match text.as_bytes().first()? {
        b'D' => {
            let (peer, frame) = take_counted(&text[1..])?;
            Some(NodePayload::Direct {
                peer: peer.to_owned(),
                frame: Utf8Bytes::from(frame),
            })
        }
        b'K' => Some(NodePayload::Kick {
            peer: text[1..].to_owned(),
        }),
        b'E' => Some(NodePayload::Echo),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_as_written() {
        let payload = encode_message(7, 42, r#"{"a":1}"#, Some(r#"{"a":1,"m":2}"#));
        let Some(ChannelPayload::Message {
            origin,
            sender,
            plain,
            with_metadata,
        }) = parse_channel_payload(&payload)
        else {
            panic!("not a message");
        };
        assert_eq!((origin, sender), (7, 42));
        assert_eq!(plain.as_str(), r#"{"a":1}"#);
        assert_eq!(with_metadata.as_deref(), Some(r#"{"a":1,"m":2}"#));
        let Some(ChannelPayload::Message { with_metadata, .. }) =
            parse_channel_payload(&encode_message(1, 2, "{}", None))
        else {
            panic!("not a message");
        };
        assert!(with_metadata.is_none());
    }

    #[test]
    fn presence_events_carry_metadata_of_any_shape() {
        let meta = "{\"n\": \"a;b:c\\n+-\"}";
        let text = format!("P3.17;+2:u1{}:{meta}+2:u20:-3:u;x", meta.len());
        let Some(ChannelPayload::Presence(event)) = parse_channel_payload(text.as_bytes()) else {
            panic!("not presence");
        };
        assert_eq!(event.version, Version { epoch: 3, seq: 17 });
        assert_eq!(&*event.joined[0].0, "u1");
        assert_eq!(event.joined[0].1.as_ref().map(|m| m.get()), Some(meta));
        assert_eq!(&*event.joined[1].0, "u2");
        assert!(event.joined[1].1.is_none());
        assert_eq!(&*event.left[0], "u;x");
        assert!(parse_channel_payload(b"P1.1;+9:u").is_none());
    }

    #[test]
    fn node_payloads_read_back() {
        let Some(NodePayload::Direct { peer, frame }) =
            parse_node_payload(&encode_direct("a:b", "{\"x\":1}"))
        else {
            panic!("not direct");
        };
        assert_eq!((peer.as_str(), frame.as_str()), ("a:b", "{\"x\":1}"));
        assert!(matches!(
            parse_node_payload(&encode_kick("p 1")),
            Some(NodePayload::Kick { peer }) if peer == "p 1"
        ));
        assert!(matches!(parse_node_payload(ECHO), Some(NodePayload::Echo)));
    }
}

//! The WebSocket protocol's frames, exactly as SPEC §5 names them.
//!
//! Client frames are read into one flat [`ClientFrame`] so that `requestId` is known even when
//! the rest of the frame is wrong. Server frames are serialized once into [`Utf8Bytes`] and shared
//! by every connection they go to; `data` and metadata travel as raw JSON, never re-parsed.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// Any frame a client sends. Which fields matter depends on `type`.
#[derive(Debug, Default, Deserialize)]
pub struct ClientFrame {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(rename = "requestId")]
    pub request_id: Option<String>,
    pub channel: Option<String>,
    pub to: Option<String>,
    /// `Some` even for JSON `null`; `None` only when the field is missing.
    #[serde(default, deserialize_with = "present_raw")]
    pub data: Option<Box<RawValue>>,
    #[serde(rename = "includeSenderMetadata", default)]
    pub include_sender_metadata: bool,
    pub since: Option<i64>,
    /// On a persistent channel's live stream: only the stored messages that mention this name.
    pub mentions: Option<String>,
}

fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Only the `requestId` of a frame that did not parse as a whole.
#[derive(Deserialize)]
struct RequestIdOnly {
    #[serde(rename = "requestId")]
    request_id: Option<String>,
}

pub const MAX_REQUEST_ID: usize = 128;

/// Why a text frame is not a usable client frame; carries the `requestId` when one was readable.
pub struct Malformed {
    pub request_id: Option<String>,
}

pub fn parse_client_frame(text: &str) -> Result<ClientFrame, Malformed> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame)
            if frame
                .request_id
                .as_ref()
                .is_some_and(|id| id.len() > MAX_REQUEST_ID) =>
        {
            Err(Malformed { request_id: None })
        }
        Ok(frame) => Ok(frame),
        Err(_) => Err(Malformed {
            request_id: serde_json::from_str::<RequestIdOnly>(text)
                .ok()
                .and_then(|r| r.request_id)
                .filter(|id| id.len() <= MAX_REQUEST_ID),
        }),
    }
}

/// One entry of a presence frame's `joined` or `left`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerEntry<'a> {
    #[serde(rename = "peerId")]
    pub peer_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        #[serde(rename = "peerId")]
        peer_id: &'a str,
        #[serde(rename = "expiresAt")]
        expires_at: Option<i64>,
        #[serde(rename = "serverTime")]
        server_time: i64,
        #[serde(rename = "maxMessageSize")]
        max_message_size: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<&'a RawValue>,
    },
    Ack {
        #[serde(rename = "requestId")]
        request_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
    Message {
        channel: &'a str,
        from: &'a str,
        data: &'a RawValue,
        #[serde(rename = "fromMetadata", skip_serializing_if = "Option::is_none")]
        from_metadata: Option<&'a RawValue>,
        /// Set by the server only, on a stored message's frame: its id, from which a client
        /// resumes with `since`. An ephemeral publish never carries it, whatever its `data`.
        #[serde(rename = "messageId", skip_serializing_if = "Option::is_none")]
        message_id: Option<i64>,
    },
    Direct {
        from: &'a str,
        data: &'a RawValue,
        #[serde(rename = "fromMetadata", skip_serializing_if = "Option::is_none")]
        from_metadata: Option<&'a RawValue>,
    },
    Presence {
        channel: &'a str,
        joined: &'a [PeerEntry<'a>],
        left: &'a [PeerEntry<'a>],
    },
    GoingAway {
        #[serde(rename = "retryAfterMs")]
        retry_after_ms: u64,
    },
    Pong {
        #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    /// The frame as one WebSocket text payload.
    pub fn encode(&self) -> Utf8Bytes {
        serde_json::to_string(self)
            .expect("server frames always serialize")
            .into()
    }
}

/// Error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedMessage,
    UnknownType,
    InvalidChannel,
    InvalidPeerId,
    ChannelNotAuthorized,
    ChannelReserved,
    ChannelLimitExceeded,
    PeerNotFound,
    MissingData,
    ActionNotPermitted,
    InternalError,
}

/// Close codes.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// The server could not go on (a replay that could not read history): reconnect and resume.
    pub const INTERNAL: u16 = 1011;
    /// The upgrade could not be checked now (the database is unreachable): reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const INVALID_TOKEN: u16 = 4001;
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// The credential may not be used here (a publishable key from an origin it does not allow).
    pub const NOT_AUTHORIZED: u16 = 4003;
    /// Too many connects from this address: back off before reconnecting.
    pub const CONNECT_LIMIT: u16 = 4010;
    pub const RATE_LIMITED: u16 = 4011;
    pub const KICKED: u16 = 4020;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_serialize_with_the_spec_field_names() {
        let data = RawValue::from_string(r#"{"x":1}"#.into()).unwrap();
        let cases = [
            (
                ServerFrame::Welcome {
                    peer_id: "p",
                    expires_at: None,
                    server_time: 5,
                    max_message_size: 65536,
                    metadata: None,
                },
                r#"{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":5,"maxMessageSize":65536}"#,
            ),
            (
                ServerFrame::Ack {
                    request_id: "r1",
                    recovered: None,
                },
                r#"{"type":"ack","requestId":"r1"}"#,
            ),
            (
                ServerFrame::Error {
                    code: ErrorCode::ChannelNotAuthorized,
                    message: "m",
                    request_id: Some("r"),
                },
                r#"{"type":"error","code":"channel_not_authorized","message":"m","requestId":"r"}"#,
            ),
            (
                ServerFrame::Message {
                    channel: "c",
                    from: "a",
                    data: &data,
                    from_metadata: None,
                    message_id: None,
                },
                r#"{"type":"message","channel":"c","from":"a","data":{"x":1}}"#,
            ),
            (
                ServerFrame::Message {
                    channel: "7",
                    from: "api",
                    data: &data,
                    from_metadata: None,
                    message_id: Some(12),
                },
                r#"{"type":"message","channel":"7","from":"api","data":{"x":1},"messageId":12}"#,
            ),
            (
                ServerFrame::Direct {
                    from: "a",
                    data: &data,
                    from_metadata: Some(&data),
                },
                r#"{"type":"direct","from":"a","data":{"x":1},"fromMetadata":{"x":1}}"#,
            ),
            (
                ServerFrame::Presence {
                    channel: "c",
                    joined: &[PeerEntry {
                        peer_id: "b",
                        metadata: None,
                    }],
                    left: &[],
                },
                r#"{"type":"presence","channel":"c","joined":[{"peerId":"b"}],"left":[]}"#,
            ),
            (
                ServerFrame::GoingAway {
                    retry_after_ms: 1000,
                },
                r#"{"type":"going_away","retryAfterMs":1000}"#,
            ),
            (
                ServerFrame::Pong {
                    request_id: Some("r5"),
                },
                r#"{"type":"pong","requestId":"r5"}"#,
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(frame.encode().as_str(), expected);
        }
    }

    #[test]
    fn null_data_is_present_and_missing_data_is_not() {
        let with_null = parse_client_frame(r#"{"type":"publish","channel":"c","data":null}"#)
            .ok()
            .unwrap();
        assert_eq!(
            with_null.data.map(|d| d.get().to_owned()).as_deref(),
            Some("null")
        );
        let without = parse_client_frame(r#"{"type":"publish","channel":"c"}"#)
            .ok()
            .unwrap();
        assert!(without.data.is_none());
    }

    #[test]
    fn a_malformed_frame_still_yields_its_request_id() {
        let bad = parse_client_frame(r#"{"type":5,"requestId":"r9"}"#)
            .err()
            .unwrap();
        assert_eq!(bad.request_id.as_deref(), Some("r9"));
        assert!(
            parse_client_frame("not json")
                .err()
                .unwrap()
                .request_id
                .is_none()
        );
        let long = format!(r#"{{"type":"ping","requestId":"{}"}}"#, "r".repeat(129));
        assert!(parse_client_frame(&long).is_err());
    }
}

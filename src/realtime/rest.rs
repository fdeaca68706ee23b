//! Realtime over REST: list a channel's peers, publish from a backend, kick a peer.

use axum::{
    extract::{FromRequest, FromRequestParts, Request, State},
    http::Method,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, value::RawValue};
use validator::{Validate, ValidationError};

use super::{
    engine::hub::fanout::Outbound,
    names::{ChannelKind, NameError, channel_kind, is_peer_id},
    protocol::ServerFrame,
    session::MAX_PEER_METADATA,
};
use crate::{
    apps::scoped,
    auth::{Admin, Principal, Scope, Scoped},
    channels::{ChannelState, channel_state},
    error::{ApiError, Envelope},
    extract::{NoQuery, Segment, ValidatedJson},
    json::Json,
    state::AppState,
};

/// Largest `data` a REST publish may carry, encoded.
pub const MAX_PUBLISH_DATA: usize = 32 * 1024;

/// Checks a `{channel}` of a realtime REST route. Persistent channels also need `scope` on the
/// key, must exist (404) and, when `writing`, must not be archived (409).
async fn authorize_channel(
    state: &AppState,
    principal: &Principal,
    channel: &str,
    scope: Scope,
    writing: bool,
) -> Result<(), ApiError> {
    let kind = channel_kind(channel).map_err(|error| match error {
        NameError::Invalid | NameError::NotCanonical => {
            ApiError::invalid_field("channel", "format", error.message())
        }
        NameError::Reserved => ApiError::ChannelReserved,
    })?;
    principal.require_channel(channel)?;
    if let ChannelKind::Persistent(id) = kind {
        principal.require(scope)?;
        principal.may_use_channel(state, id).await?;
        match channel_state(&state.db, id).await? {
            None => return Err(ApiError::channel_not_found(id)),
            Some(ChannelState::Archived) if writing => return Err(ApiError::ChannelArchived(id)),
            Some(_) => {}
        }
    }
    Ok(())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PeerInfo<'a> {
    #[serde(rename = "peerId")]
    pub peer_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<&'a RawValue>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PeersBody<'a> {
    pub channel: &'a str,
    pub peers: Vec<PeerInfo<'a>>,
}

/// `GET /v1/channels/{channel}/peers`.
#[utoipa::path(get, path = "/v1/channels/{channel}/peers", operation_id = "listPeers", tag = "realtime", security(("bearer" = []), ("api_key" = [])),
    params(("channel" = String, Path, pattern = r"^(?!_metered/|_internal/|_system/|0[0-9]*$|[0-9]{20,}$)[^\u0000-\u001F\u007F-\u009F]{1,256}$", description = "Realtime channel name: 1-256 characters without control characters, not starting with `_metered/`, `_internal/` or `_system/`; URL-encoded (`app_abc%2Froom-1`), though the literal form with `/` works too. All digits: the live stream of persistent channel N, written as the API writes ids (`42`, not `042`)")),
    responses(
        (status = 200, description = "Peers present in the channel", body = PeersBody),
        (status = 400, description = "A malformed (`invalid_request`) or reserved (`channel_reserved`) channel name", body = Envelope),
        (status = 404, description = "All-digit name of a persistent channel that does not exist", body = Envelope),
    ))]
pub async fn peers(
    principal: Principal,
    _: NoQuery,
    State(state): State<AppState>,
    Segment(channel): Segment,
) -> Response {
    peers_of(&state, &principal, &channel).await.into_response()
}

async fn peers_of(
    state: &AppState,
    principal: &Principal,
    channel: &str,
) -> Result<Response, ApiError> {
    principal.require(Scope::Presence)?;
    authorize_channel(state, principal, channel, Scope::ChannelsRead, false).await?;
    let roster = state
        .realtime
        .engine
        .roster(&scoped(principal.app_id(), channel))
        .await?;
    let peers: Vec<PeerInfo<'_>> = roster
        .iter()
        .map(|(peer_id, metadata)| PeerInfo {
            peer_id,
            metadata: metadata.as_deref(),
        })
        .collect();
    Ok(Json(PeersBody { channel, peers }).into_response())
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Any JSON, `null` included; required.
    #[serde(default, deserialize_with = "present_raw")]
    #[schema(value_type = serde_json::Value, required = true)]
    pub data: Option<Box<RawValue>>,
    /// The sender subscribers see: a peer id, 1-128 printable ASCII characters; `server` when
    /// absent.
    #[validate(custom(function = "valid_from"))]
    #[schema(pattern = "^[ -~]{1,128}$")]
    pub from: Option<String>,
    /// Shown as `fromMetadata` to subscribers that asked for it; at most 4 KiB.
    #[serde(rename = "peerMetadata")]
    #[schema(value_type = Option<Object>)]
    pub peer_metadata: Option<Map<String, Value>>,
}

fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn valid_from(from: &str) -> Result<(), ValidationError> {
    if is_peer_id(from) {
        Ok(())
    } else {
        Err(ValidationError::new("format")
            .with_message("from must be 1-128 printable ASCII characters".into()))
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Delivered<'a> {
    pub channel: &'a str,
    pub delivered: usize,
}

/// `POST /v1/channels/{channel}/publish`: reaches every subscriber; answers how many.
#[utoipa::path(post, path = "/v1/channels/{channel}/publish", operation_id = "publish", tag = "realtime", security(("bearer" = []), ("api_key" = [])),
    params(("channel" = String, Path, pattern = r"^(?!_metered/|_internal/|_system/|0[0-9]*$|[0-9]{20,}$)[^\u0000-\u001F\u007F-\u009F]{1,256}$", description = "Realtime channel name: 1-256 characters without control characters, not starting with `_metered/`, `_internal/` or `_system/`; URL-encoded (`app_abc%2Froom-1`), though the literal form with `/` works too. All digits: the live stream of persistent channel N, written as the API writes ids (`42`, not `042`)")),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published; `delivered` counts the subscribers reached", body = Delivered),
        (status = 400, description = "A malformed body or channel name, or a reserved channel", body = Envelope),
        (status = 404, description = "All-digit name of a persistent channel that does not exist", body = Envelope),
        (status = 409, description = "The persistent channel is archived", body = Envelope),
        (status = 413, description = "`data` over 32 KiB or body over 1 MiB", body = Envelope),
    ))]
pub async fn publish(
    principal: Principal,
    _: NoQuery,
    State(state): State<AppState>,
    Segment(channel): Segment,
    body: ValidatedJson<PublishRequest>,
) -> Response {
    publish_to(&state, &principal, &channel, body.0)
        .await
        .into_response()
}

async fn publish_to(
    state: &AppState,
    principal: &Principal,
    channel: &str,
    request: PublishRequest,
) -> Result<Response, ApiError> {
    principal.require(Scope::Publish)?;
    let data = request.data.ok_or_else(|| {
        ApiError::invalid_field(
            "data",
            "required",
            "data is required (null is a valid value)",
        )
    })?;
    if data.get().len() > MAX_PUBLISH_DATA {
        return Err(ApiError::PayloadTooLarge(
            "data must be at most 32 KiB encoded".into(),
        ));
    }
    let peer_metadata = match request.peer_metadata {
        Some(object) => {
            let raw = serde_json::value::to_raw_value(&object)
                .map_err(|e| ApiError::Internal(Box::new(e)))?;
            if raw.get().len() > MAX_PEER_METADATA {
                return Err(ApiError::invalid_field(
                    "peerMetadata",
                    "length",
                    "peerMetadata must be at most 4 KiB",
                ));
            }
            Some(raw)
        }
        None => None,
    };
    authorize_channel(state, principal, channel, Scope::ChannelsWrite, true).await?;
    let from = request.from.as_deref().unwrap_or("server");
    let plain: Outbound = ServerFrame::Message {
        channel,
        from,
        data: &data,
        from_metadata: None,
        message_id: None,
    }
    .encode()
    .into();
    let with_metadata: Option<Outbound> = peer_metadata.as_deref().map(|metadata| {
        ServerFrame::Message {
            channel,
            from,
            data: &data,
            from_metadata: Some(metadata),
            message_id: None,
        }
        .encode()
        .into()
    });
    let delivered = state
        .realtime
        .engine
        .publish_counted(
            &scoped(principal.app_id(), channel),
            &plain,
            with_metadata.as_ref(),
        )
        .await?;
    Ok(Json(Delivered { channel, delivered }).into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Kicked {
    #[serde(rename = "peerId")]
    pub peer_id: String,
    pub closed: usize,
}

/// `DELETE /v1/peers/{peerId}`: closes every connection of the peer with 4020.
#[utoipa::path(delete, path = "/v1/peers/{peer_id}", operation_id = "kickPeer", tag = "realtime", security(("bearer" = []), ("api_key" = [])),
    params(("peer_id" = String, Path, pattern = "^[ -~]{1,128}$", description = "1-128 printable ASCII characters")),
    responses(
        (status = 200, description = "The peer's connections were closed with 4020 (`closed` may be 0)", body = Kicked),
        (status = 400, description = "A malformed peer id", body = Envelope),
    ))]
pub async fn kick(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
    Segment(peer_id): Segment,
) -> Result<Json<Kicked>, ApiError> {
    if !is_peer_id(&peer_id) {
        return Err(ApiError::invalid_field(
            "peerId",
            "format",
            "peer ids are 1-128 printable ASCII characters",
        ));
    }
    // An admin key reaches only its own app's peers.
    let closed = state
        .realtime
        .engine
        .kick(&scoped(caller.principal.app_id(), &peer_id))
        .await?;
    Ok(Json(Kicked { peer_id, closed }))
}

/// The literal form `/v1/channels/app_abc/room-1/peers` (a `/` inside the channel name, not
/// encoded), which the router's `{channel}` segment cannot capture. Every other unmatched path
/// is 404.
pub async fn literal_channel_routes(State(state): State<AppState>, request: Request) -> Response {
    let Some((channel, action)) = literal_channel(request.uri().path()) else {
        return ApiError::no_route(request.uri().path()).into_response();
    };
    let (mut parts, body) = request.into_parts();
    let principal = match Principal::from_request_parts(&mut parts, &state).await {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = NoQuery::from_request_parts(&mut parts, &state).await {
        return error.into_response();
    }
    let result = match (action, &parts.method) {
        ("peers", &Method::GET) => peers_of(&state, &principal, &channel).await,
        ("publish", &Method::POST) => {
            match ValidatedJson::<PublishRequest>::from_request(
                Request::from_parts(parts, body),
                &state,
            )
            .await
            {
                Ok(ValidatedJson(request)) => {
                    publish_to(&state, &principal, &channel, request).await
                }
                Err(error) => Err(error),
            }
        }
        _ => Err(ApiError::MethodNotAllowed),
    };
    result.into_response()
}

/// The route a literal-form path answers to, for metrics labels.
pub(crate) fn literal_route(path: &str) -> Option<&'static str> {
    match literal_channel(path)?.1 {
        "peers" => Some("/v1/channels/{channel}/peers"),
        _ => Some("/v1/channels/{channel}/publish"),
    }
}

/// `/v1/channels/<name with slashes>/(peers|publish)` → (decoded name, action).
fn literal_channel(path: &str) -> Option<(String, &'static str)> {
    let rest = path.strip_prefix("/v1/channels/")?;
    let (raw, action) = rest.rsplit_once('/')?;
    let action = match action {
        "peers" => "peers",
        "publish" => "publish",
        _ => return None,
    };
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    Some((name.into_owned(), action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_paths_keep_their_slashes() {
        assert_eq!(
            literal_channel("/v1/channels/app_abc/room-1/peers"),
            Some(("app_abc/room-1".into(), "peers"))
        );
        assert_eq!(
            literal_channel("/v1/channels/a/b/c/publish"),
            Some(("a/b/c".into(), "publish"))
        );
        assert_eq!(
            literal_channel("/v1/channels/a%20b/x/peers"),
            Some(("a b/x".into(), "peers"))
        );
        assert_eq!(literal_channel("/v1/channels/a/b/messages"), None);
        assert_eq!(literal_channel("/v2/channels/a/b/peers"), None);
    }
}

//! API keys: generation and hashing, storage, scopes, the [`Principal`] extractor that
//! authenticates every REST request, channel patterns, and realtime tokens.

pub mod cache;
mod db;
pub mod failures;
mod keys;
pub mod patterns;
mod principal;
pub mod routes;
mod scopes;
mod secrets;
pub mod streams;
pub mod tokens;

pub use cache::KeyCache;
pub use db::{
    ApiKey, NewKey, NewPublishableKey, PublishableKey, create_key, create_publishable_key,
    find_key, find_publishable_key, inactive_among, list_app_keys, list_keys,
    list_publishable_keys, revoke_app_key, revoke_key, revoke_publishable_key,
};
pub use keys::{Credential, GeneratedKey, is_publishable};
pub use patterns::Pattern;
pub use principal::{Admin, ChannelsRead, ChannelsWrite, Principal, Scoped};
pub use scopes::{Scope, ScopeSet};
pub use secrets::MasterKey;

/// `/v1/keys`: derived keys over REST.
pub fn router() -> utoipa_axum::router::OpenApiRouter<crate::state::AppState> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(routes::create, routes::list))
        .routes(utoipa_axum::routes!(routes::revoke))
}
